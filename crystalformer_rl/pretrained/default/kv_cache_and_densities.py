"""The pieces the model and its sampler share: the key/value cache of lockstep decoding and the mixture densities
of the coordinates (von Mises) and the lattice (Gaussian). The model and the sampler both import this module, so
neither needs the other for them."""

from __future__ import annotations

import math

import torch


__all__ = ["CrystalFormerKVCache", "gaussian_mixture_log_prob", "von_mises_mixture_log_prob"]


class CrystalFormerKVCache:
    """Key/value buffers of every layer for lockstep decoding (all samples sit at the same position).

    Per layer, keys and values (after RoPE, at their absolute positions) live in (batch, max_length, heads,
    head_dim) buffers allocated once: on CPU, memory pages are only touched as positions are written, so the
    resident memory grows with the sequence and nothing is copied as it grows (on a GPU the whole buffer is
    reserved: bound it with `sample(..., max_batch_size=)`). `select` drops finished samples by moving the kept
    rows (their filled positions only) to the front of the same buffers. For the Alex-20 configuration a
    position costs 16 layers x 2 x 1024 floats = 128 KiB per sample.
    """

    def __init__(self, num_layers: int, max_length: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.max_length = max_length
        self.length = 0  # filled positions
        self.batch = None  # rows in use (the first ones of each buffer)

    def select(self, index: torch.Tensor):
        """Keep only the samples `index` (a long tensor of rows, in the order they will have)."""
        for store in (self.keys, self.values):
            for tensor in store:
                if tensor is not None:
                    tensor[: index.shape[0], : self.length] = tensor[index, : self.length]
        self.batch = index.shape[0]

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new (batch, T, heads, head_dim) keys/values at the current position; return all so far."""
        end = self.length + key.shape[1]
        if end > self.max_length:
            raise ValueError(f"the KV cache holds {self.max_length} positions, cannot write up to {end}")
        if self.batch is None:
            self.batch = key.shape[0]
        if key.shape[0] != self.batch:
            raise ValueError(f"the KV cache holds {self.batch} samples, got {key.shape[0]}")
        for store, new in ((self.keys, key), (self.values, value)):
            if store[layer] is None:
                store[layer] = new.new_empty(new.shape[0], self.max_length, *new.shape[2:])
            store[layer][: self.batch, self.length : end] = new
        return self.keys[layer][: self.batch, :end], self.values[layer][: self.batch, :end]


def von_mises_mixture_log_prob(theta, log_weights, loc, concentration):
    """log Σ_k w_k VM(θ; μ_k, κ_k) with log VM = κ(cos(θ - μ) - 1) - log 2π - log I0e(κ). θ (...), params (..., K)."""
    log_vm = (
        concentration * (torch.cos(theta[..., None] - loc) - 1)
        - math.log(2 * math.pi)
        - torch.log(torch.special.i0e(concentration))
    )
    return torch.logsumexp(log_weights + log_vm, dim=-1)


def gaussian_mixture_log_prob(x, log_weights, mean, std):
    """Per-dimension mixtures sharing weights: x (B, D), log_weights (B, K), mean and std (B, K, D) -> (B, D)."""
    z = (x[:, None, :] - mean) / std
    log_normal = -0.5 * z**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_weights[..., None] + log_normal, dim=1)
