"""PyTorch CrystalFormer: a space-group-conditioned autoregressive transformer over Wyckoff sites.

A port of the reference JAX/haiku CrystalFormer (deepmodeling/CrystalFormer v0.4.2) that reproduces its
outputs and log-likelihood exactly (see ``shared/docs/crystalformer-reference.md`` §2-3):

* sequence: ``n`` Wyckoff sites of five tokens (W, A, X, Y, Z), so ``5n`` transformer positions; the space
  group G is not a token, its embedding is concatenated into every token's input features;
* pre-LN trunk with RoPE (rotate-half, over all head dims) and tanh-GELU MLPs;
* the first Wyckoff letter comes from a small MLP on the space-group embedding ("h0");
* output row ``5i`` predicts W_i, ``5i+1`` predicts A_i and (at the first padding site) the lattice,
  ``5i+2 .. 5i+4`` predict X_i, Y_i, Z_i;
* coordinates are mixtures of von Mises, the lattice a mixture of Gaussians scored per dimension.

Every constraint of the reference (W never decreases, fixed special positions never repeat, padding is
absorbing, A = 0 iff W = 0, letters beyond the group's last position impossible) is a boolean mask that puts
``-inf`` in the forbidden logits, instead of the reference's ``±1e10`` additive constants (which are only
safe in float64).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .crystallography import (
    CRYSTAL_SYSTEM_OF_GROUP,
    LATTICE_DIM,
    LATTICE_FREE,
    NUM_SPACE_GROUPS,
    TOKENS_PER_SITE,
    TRANSLATION_DENOMINATOR,
)
from .wyckoff import WyckoffTables
from .configuration_crystalformer import CrystalFormerConfig
from .kv_cache_and_densities import CrystalFormerKVCache, gaussian_mixture_log_prob, von_mises_mixture_log_prob


if TYPE_CHECKING:
    from .sampling_crystalformer import SamplingOptions


# ---------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------


@dataclass
class CrystalFormerOutput(ModelOutput):
    r"""
    Output of [`CrystalFormerForCrystalGeneration.forward`] and [`~CrystalFormerForCrystalGeneration.log_prob`].

    Args:
        loss (`torch.Tensor` of shape `()`, returned when `L` is given):
            `loss_xyz + lambda_a * loss_a + lambda_w * loss_w + lambda_l * loss_l`.
        loss_w, loss_a, loss_xyz, loss_l (`torch.Tensor` of shape `()`):
            Negative batch means of the four log-likelihood terms.
        logp (`torch.Tensor` of shape `(batch_size,)`): `logp_w + logp_xyz + logp_a + logp_l`.
        logp_w, logp_a, logp_xyz, logp_l (`torch.Tensor` of shape `(batch_size,)`):
            Log-likelihood of the Wyckoff letters, elements, free fractional coordinates (dependent ones such as
            y in `x,x,z` included, as in the reference) and free lattice parameters of each crystal.
        logits (`torch.Tensor` of shape `(batch_size, 5 * num_sites + 1, output_size)`):
            The reference's post-processed output rows: row `5i` holds log p(W_i) in its first `wyck_types`
            columns; row `5i+1` holds log p(A_i) in its first `atom_types` columns followed by the lattice mixture
            (log-weights, means, standard deviations); rows `5i+2..5i+4` hold the coordinate mixtures of X_i, Y_i,
            Z_i (log-weights, locations in radians, concentrations). Forbidden entries are `-inf`, unused columns
            0. The last row predicts a letter after the last site and is not used.
        last_hidden_state (`torch.Tensor` of shape `(batch_size, 5 * num_sites, hidden_size)`):
            Trunk output after the final LayerNorm.
    """

    loss: torch.Tensor | None = None
    loss_w: torch.Tensor | None = None
    loss_a: torch.Tensor | None = None
    loss_xyz: torch.Tensor | None = None
    loss_l: torch.Tensor | None = None
    logp: torch.Tensor | None = None
    logp_w: torch.Tensor | None = None
    logp_a: torch.Tensor | None = None
    logp_xyz: torch.Tensor | None = None
    logp_l: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------------
# Symmetry tables (non-trainable, not saved)
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _symmetry_arrays() -> dict[str, np.ndarray]:
    """Everything the model needs from the Wyckoff tables, as numpy arrays indexed by [G - 1, ...]."""
    tables = WyckoffTables.load()
    wyck_types = tables.mult.shape[1]
    letters = np.arange(wyck_types)
    wmax = tables.wmax.astype(np.int64)

    # The first letter is any real position of the group.
    first_allowed = (letters[None, :] >= 1) & (letters[None, :] <= wmax[:, None])

    # next_allowed[g, w, j]: may W_{i+1} = j follow W_i = w ?
    #  * letter 0 (stop) always may; after padding only letter 0 may (padding is absorbing);
    #  * after a fixed special position (dof0) the next letter must be strictly larger, otherwise not smaller;
    #  * letters beyond the group's last position never appear.
    prev = letters[None, :, None]
    nxt = letters[None, None, :]
    order_ok = np.where(tables.dof0[:, :, None], nxt > prev, nxt >= prev)
    real_next = (nxt >= 1) & (nxt <= wmax[:, None, None]) & order_ok & (prev >= 1)
    next_allowed = real_next | (nxt == 0)

    return {
        "mult": tables.mult.astype(np.int64),
        "wmax": wmax,
        "dof0": tables.dof0.astype(bool),
        "fc_mask": tables.fc_mask.astype(bool),
        # Exact rationals with denominator 24, stored as integers so that `model.to(dtype)` leaves them alone.
        "op0_x24": np.rint(tables.op0 * TRANSLATION_DENOMINATOR).astype(np.int16),
        "first_w_allowed": first_allowed,
        "next_w_allowed": next_allowed,
        # Crystal system of each group (index into `crystallography.CRYSTAL_SYSTEMS`) and its free lattice parameters.
        "crystal_system": CRYSTAL_SYSTEM_OF_GROUP.copy(),
        "lattice_mask": LATTICE_FREE[CRYSTAL_SYSTEM_OF_GROUP],
    }


class CrystalFormerSymmetryTables(nn.Module):
    """Wyckoff and crystal-system tables as non-persistent buffers (they follow `.to(device)`, but are not
    part of the state dict). All are indexed ``[G - 1, W, ...]``.

    * ``mult`` (230, 28): multiplicity; ``wmax`` (230,): number of Wyckoff positions of the group;
    * ``dof0`` (230, 28): the representative has no free coordinate; ``fc_mask`` (230, 28, 3): which of x, y, z
      are not constants; ``op0_x24`` (230, 28, 3, 4): 24 x the representative affine operation (integers, so
      that it is exact and not cast by `model.to(dtype)`); the `op0` property gives it in float64;
    * ``first_w_allowed`` (230, 28) and ``next_w_allowed`` (230, 28, 28): the Wyckoff-letter masks;
    * ``crystal_system`` (230,) and ``lattice_mask`` (230, 6): free lattice parameters.
    """

    def __init__(self):
        super().__init__()
        for name, array in _symmetry_arrays().items():
            self.register_buffer(name, torch.from_numpy(array.copy()), persistent=False)

    @property
    def op0(self) -> torch.Tensor:
        return self.op0_x24.double() / TRANSLATION_DENOMINATOR

    def reset_tables(self):
        for name, array in _symmetry_arrays().items():
            init.copy_(getattr(self, name), torch.from_numpy(array))


# ---------------------------------------------------------------------------------------------------------
# Trunk
# ---------------------------------------------------------------------------------------------------------


def fourier_features(t: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """(..., ) fractional coordinates -> (..., 2 * Nf): [sin 2πx, cos 2πx, sin 4πx, cos 4πx, ...]."""
    frequencies = torch.arange(1, num_frequencies + 1, device=t.device, dtype=t.dtype)
    angles = 2 * math.pi * t[..., None] * frequencies
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)


def rope_tables(num_positions: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (num_positions, head_dim) in the rotate-half layout.

    The angles and their sin/cos are computed in float32, as the reference does even when the network runs in
    float64 (float64 outputs then match the reference to ~1e-8, the float32 sin/cos differing by an ulp).
    """
    fraction = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    inv_freq = 1.0 / (torch.tensor(theta, dtype=torch.float32, device=device) ** fraction)
    angles = torch.arange(num_positions, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x * cos + (-x[half:], x[:half]) * sin, for x (..., head_dim)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class CrystalFormerAttention(nn.Module):
    """Multi-head causal self-attention with biases on all projections; inner width heads * head_dim.

    The query, key and value projections are fused in one Linear (`qkv_proj`, rows in that order)."""

    def __init__(self, config: CrystalFormerConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        inner = self.num_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * inner)
        self.o_proj = nn.Linear(inner, config.hidden_size)
        self.dropout = config.attention_dropout

    def forward(self, x, rope=None, cache: CrystalFormerKVCache | None = None, layer_idx: int = 0):
        batch, length, _ = x.shape
        qkv = self.qkv_proj(x).view(batch, length, 3, self.num_heads, self.head_dim)
        qk, v = qkv[:, :, :2], qkv[:, :, 2]
        if rope is not None:
            cos, sin = rope  # (length, head_dim): the absolute positions of these tokens
            qk = apply_rope(qk, cos[:, None, None], sin[:, None, None])
        q, k = qk[:, :, 0], qk[:, :, 1]
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer_idx, k, v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (batch, heads, T, head_dim)
        dropout = self.dropout if self.training else 0.0
        if length == 1:  # one new token attends to everything before it: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:  # several new tokens after a filled cache
            rows = torch.arange(length, device=x.device)[:, None] + past
            mask = torch.arange(k.shape[2], device=x.device)[None, :] <= rows
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.o_proj(y.transpose(1, 2).reshape(batch, length, -1))


class CrystalFormerMLP(nn.Module):
    def __init__(self, config: CrystalFormerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CrystalFormerBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x)), dropout on both residual branches."""

    def __init__(self, config: CrystalFormerConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = CrystalFormerAttention(config)
        self.ln_mlp = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CrystalFormerMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x, rope=None, cache=None, layer_idx: int = 0):
        x = x + self.dropout(self.attn(self.ln_attn(x), rope, cache, layer_idx))
        return x + self.dropout(self.mlp(self.ln_mlp(x)))


class CrystalFormerModel(nn.Module):
    """Token embeddings and the transformer trunk (up to the final LayerNorm).

    Each token is a Linear map of [space-group embedding ‖ token features] to `hidden_size`:
    W: [g ‖ w_embed(W) ‖ multiplicity], A: [g ‖ a_embed(A)], X/Y/Z: [g ‖ Fourier features of the coordinate].
    """

    def __init__(self, config: CrystalFormerConfig):
        super().__init__()
        self.config = config
        d, e = config.hidden_size, config.embed_size
        fourier = 2 * config.num_fourier_frequencies
        self.g_embed = nn.Embedding(NUM_SPACE_GROUPS, e)
        self.w_embed = nn.Embedding(config.wyck_types, e)
        self.a_embed = nn.Embedding(config.atom_types, e)
        self.proj_w = nn.Linear(2 * e + 1, d)
        self.proj_a = nn.Linear(2 * e, d)
        self.proj_x = nn.Linear(e + fourier, d)
        self.proj_y = nn.Linear(e + fourier, d)
        self.proj_z = nn.Linear(e + fourier, d)
        if config.position_embedding_type == "absolute":
            self.pos_embed = nn.Parameter(torch.zeros(config.max_positions, d))
        else:
            self.pos_embed = None
        self.layers = nn.ModuleList(CrystalFormerBlock(config) for _ in range(config.num_hidden_layers))
        self.final_ln = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self._rope_cache: dict = {}

    # -- embeddings ---------------------------------------------------------------------------------------

    def embed_token(self, kind: int, g: torch.Tensor, value: torch.Tensor, mult: torch.Tensor | None = None):
        """Embed one kind of token for every site. `kind` is 0..4 for W, A, X, Y, Z; `g` (..., embed_size)
        is the space-group embedding broadcast to `value`'s shape (...); `mult` the multiplicity (W only)."""
        if kind == 0:
            return self.proj_w(torch.cat([g, self.w_embed(value), mult.to(g.dtype)[..., None]], dim=-1))
        if kind == 1:
            return self.proj_a(torch.cat([g, self.a_embed(value)], dim=-1))
        proj = (self.proj_x, self.proj_y, self.proj_z)[kind - 2]
        return proj(torch.cat([g, fourier_features(value.to(g.dtype), self.config.num_fourier_frequencies)], dim=-1))

    def embed(self, g: torch.Tensor, W, A, XYZ, mult) -> torch.Tensor:
        """(B, n) sites -> (B, 5n, hidden) interleaved W_0, A_0, X_0, Y_0, Z_0, W_1, ..."""
        g = g[:, None, :].expand(-1, W.shape[1], -1)
        tokens = [
            self.embed_token(0, g, W, mult),
            self.embed_token(1, g, A),
            *(self.embed_token(2 + c, g, XYZ[..., c]) for c in range(3)),
        ]
        return torch.stack(tokens, dim=2).flatten(1, 2)

    # -- trunk ----------------------------------------------------------------------------------------------

    def rope(self, start: int, length: int, device, dtype):
        key = (device, dtype)
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_tables(
                self.config.max_positions, self.config.head_dim, self.config.rope_theta, device, dtype
            )
        cos, sin = self._rope_cache[key]
        if start + length > cos.shape[0]:
            raise ValueError(f"position {start + length - 1} is beyond the {cos.shape[0]} positions of the model")
        return cos[start : start + length], sin[start : start + length]

    def forward(self, inputs_embeds: torch.Tensor, cache: CrystalFormerKVCache | None = None) -> torch.Tensor:
        """(B, T, hidden) token embeddings at positions [start, start + T) -> hidden states after the final LN.
        `start` is 0 without a cache, else the cache length (and the cache is advanced by T)."""
        start = 0 if cache is None else cache.length
        length = inputs_embeds.shape[1]
        x = inputs_embeds
        rope = None
        if self.pos_embed is not None:
            if start + length > self.pos_embed.shape[0]:
                raise ValueError(f"position {start + length - 1} is beyond the {self.pos_embed.shape[0]} positions")
            x = x + self.pos_embed[start : start + length]
        else:
            rope = self.rope(start, length, x.device, x.dtype)
        for layer_idx, layer in enumerate(self.layers):
            x = layer(x, rope, cache, layer_idx)
        if cache is not None:
            cache.length += length
        return self.final_ln(x)


# ---------------------------------------------------------------------------------------------------------
# The generative model
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Normal(0, std) truncated at ±2 std (haiku's TruncatedNormal), by resampling the outliers. Skips tensors
    that `from_pretrained` already loaded (the `_is_hf_initialized` flag)."""
    if getattr(tensor, "_is_hf_initialized", False) or tensor.device.type == "meta":
        return tensor
    tensor.normal_(0.0, std)
    outside = tensor.abs() > 2 * std
    while bool(outside.any()):
        tensor[outside] = torch.randn(int(outside.sum()), dtype=tensor.dtype, device=tensor.device) * std
        outside = tensor.abs() > 2 * std
    return tensor


class CrystalFormerPreTrainedModel(PreTrainedModel):
    config_class = CrystalFormerConfig
    config: CrystalFormerConfig
    base_model_prefix = "transformer"
    main_input_name = "W"
    accepts_loss_kwargs = False  # the loss is a batch mean: let the Trainer scale it for gradient accumulation
    _no_split_modules = ["CrystalFormerBlock"]
    supports_gradient_checkpointing = False
    #: ``{space group: count}`` of the training data, read from the folder the model was loaded from and written by
    #: ``save_pretrained`` (``space_group_distribution.json``); ``None`` if unknown
    space_group_distribution: dict[int, int] | None = None
    #: the crystal tokenizer's config (``tokenizer_config.json``) of that folder, written back by ``save_pretrained``
    tokenizer_config: dict | None = None
    #: text and metadata of the model card `save_pretrained` writes where the folder has none (e.g. a converted
    #: checkpoint's); by default a generic card
    model_card_text: str | None = None
    model_card_metadata: dict | None = None

    # -- model folders (see `hub_crystalformer.py`) -----------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, keeping the folder's space-group distribution and tokenizer config."""
        from .hub_crystalformer import load_folder_files

        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        load_folder_files(loaded[0] if isinstance(loaded, tuple) else loaded, pretrained_model_name_or_path, **kwargs)
        return loaded

    def save_pretrained(self, save_directory, is_main_process: bool = True, state_dict=None, push_to_hub=False, **kwargs):
        """`PreTrainedModel.save_pretrained`, writing a whole model folder: config (with `auto_map`), weights, the
        remote code (`AutoModel.from_pretrained(folder, trust_remote_code=True)` needs only torch and
        transformers), tokenizer config, space-group distribution and a model card with the Hub's metadata.
        `push_to_hub=True` then uploads the folder (to `repo_id`, default: the folder's name)."""
        from .hub_crystalformer import auto_map, upload_model_folder, write_model_folder

        hub = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "private", "create_pr") if k in kwargs}
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **auto_map(self)}
        super().save_pretrained(save_directory, is_main_process=is_main_process, state_dict=state_dict, **kwargs)
        if is_main_process:
            write_model_folder(self, save_directory)
            if push_to_hub:
                repo_id = hub.pop("repo_id", Path(save_directory).name)
                return upload_model_folder(save_directory, repo_id, token=kwargs.get("token"), **hub)
        return None

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
    ):
        """Upload the model folder that `save_pretrained` writes (remote code, model card and all) to `repo_id`."""
        from .hub_crystalformer import upload_model_folder

        if tags:
            self.add_model_tags(tags)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            return upload_model_folder(
                folder,
                repo_id,
                token=token,
                private=private,
                commit_message=commit_message,
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
            )

    @torch.no_grad()
    def _init_weights(self, module):
        """Reference initialisation: truncated normal (σ = initializer_range, cut at 2σ) for every Linear
        weight, embedding table and learned table; zero biases; LayerNorm scale 1, offset 0."""
        std = self.config.initializer_range

        def truncated(tensor):
            truncated_normal_(tensor, std)

        if isinstance(module, nn.Linear):
            truncated(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            truncated(module.weight)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, CrystalFormerModel):
            if module.pos_embed is not None:
                truncated(module.pos_embed)
        elif isinstance(module, CrystalFormerSymmetryTables):
            module.reset_tables()
        elif isinstance(module, CrystalFormerForCrystalGeneration):
            if module.w_params is not None:
                truncated(module.w_params)


class CrystalFormerForCrystalGeneration(CrystalFormerPreTrainedModel):
    r"""
    CrystalFormer with its output head: exact log-likelihood of tokenized crystals (`forward`, `log_prob`),
    KV-cached autoregressive sampling (`sample`) and Metropolis–Hastings chains on its posterior (`mcmc`).

    Inputs use the tokenizer's layout, padded to any number of sites `n <= n_max`:
    `G` (B,) space group 1..230; `W` (B, n) Wyckoff letters (0 = padding, 1 = 'a'); `A` (B, n) atomic numbers
    (0 = padding); `XYZ` (B, n, 3) fractional coordinates in [0, 1); `L` (B, 6) model-space lattice
    (a, b, c divided by N^(1/3) in Å, angles in radians; N = atoms in the conventional cell).
    """

    def __init__(self, config: CrystalFormerConfig):
        super().__init__(config)
        self.transformer = CrystalFormerModel(config)
        if config.h0_size > 0:
            self.h0_fc1 = nn.Linear(config.embed_size, config.h0_size)
            self.h0_fc2 = nn.Linear(config.h0_size, config.wyck_types)
            self.w_params = None
        else:
            self.h0_fc1 = self.h0_fc2 = None
            self.w_params = nn.Parameter(torch.zeros(NUM_SPACE_GROUPS, config.wyck_types))
        self.head = nn.Linear(config.hidden_size, config.output_size)
        self.symmetry = CrystalFormerSymmetryTables()
        self.post_init()

    # -- input handling -------------------------------------------------------------------------------------

    def _as_tensor(self, x, dtype):
        if isinstance(x, np.ndarray) or not torch.is_tensor(x):
            x = torch.as_tensor(np.asarray(x))
        return x.to(device=self.device, dtype=dtype)

    def _check_inputs(self, G, W, A, XYZ, L=None):
        cfg = self.config
        G = self._as_tensor(G, torch.long).reshape(-1)
        W = self._as_tensor(W, torch.long)
        A = self._as_tensor(A, torch.long)
        XYZ = self._as_tensor(XYZ, self.dtype)
        batch = G.shape[0]
        if W.dim() != 2 or W.shape[0] != batch:
            raise ValueError(f"W must have shape (batch={batch}, num_sites), got {tuple(W.shape)}")
        num_sites = W.shape[1]
        if A.shape != W.shape:
            raise ValueError(f"A must have the shape of W {tuple(W.shape)}, got {tuple(A.shape)}")
        if XYZ.shape != (batch, num_sites, 3):
            raise ValueError(f"XYZ must have shape {(batch, num_sites, 3)}, got {tuple(XYZ.shape)}")
        if not 1 <= num_sites <= cfg.n_max:
            raise ValueError(f"the number of sites must be between 1 and n_max={cfg.n_max}, got {num_sites}")
        ranges = (
            (G, 1, NUM_SPACE_GROUPS, f"space groups must be in 1..{NUM_SPACE_GROUPS}"),
            (W, 0, cfg.wyck_types - 1, f"Wyckoff letters must be in 0..{cfg.wyck_types - 1}"),
            (A, 0, cfg.atom_types - 1, f"atom types must be in 0..{cfg.atom_types - 1}"),
        )
        for values, low, high, message in ranges:
            if not values.numel():
                continue
            if values.device.type == "cpu":
                if values.min() < low or values.max() > high:
                    raise ValueError(f"{message}, got values in [{int(values.min())}, {int(values.max())}]")
            else:  # an accelerator: check without a host sync (fails as a device-side assert)
                torch._assert_async(((values >= low) & (values <= high)).all(), message)
        if L is not None:
            L = self._as_tensor(L, self.dtype)
            if L.shape != (batch, LATTICE_DIM):
                raise ValueError(f"L must have shape {(batch, LATTICE_DIM)}, got {tuple(L.shape)}")
        return G, W, A, XYZ, L

    # -- output rows ----------------------------------------------------------------------------------------

    def first_wyckoff_logprobs(self, G: torch.Tensor) -> torch.Tensor:
        """log p(W_0 | G), (B, wyck_types): letters 1..wmax(G) only."""
        if self.w_params is not None:
            logits = self.w_params[G - 1]
        else:
            g = self.transformer.g_embed(G - 1)
            logits = self.h0_fc2(F.gelu(self.h0_fc1(g), approximate="tanh"))
        allowed = self.symmetry.first_w_allowed[G - 1]
        return torch.log_softmax(logits.masked_fill(~allowed, -math.inf), dim=-1)

    def wyckoff_logprobs(self, raw: torch.Tensor, G: torch.Tensor, W_prev: torch.Tensor, site: int | torch.Tensor):
        """log p(W_site | W_{site-1} = W_prev), from the raw output at the previous site's Z token.
        raw (..., >= wyck_types); G and W_prev broadcastable to raw.shape[:-1]; `site` the index being predicted."""
        allowed = self.symmetry.next_w_allowed[G - 1, W_prev]
        if self.config.reserve_lattice_site:
            # The last site must stay empty: the lattice is read at the first padding site.
            is_last = torch.as_tensor(site, device=raw.device) == self.config.n_max - 1
            allowed = allowed & ~(is_last[..., None] & (torch.arange(allowed.shape[-1], device=raw.device) > 0))
        logits = raw[..., : self.config.wyck_types]
        return torch.log_softmax(logits.masked_fill(~allowed, -math.inf), dim=-1)

    def atom_logprobs(self, raw: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """log p(A_i | ..., W_i) from the raw output at the W_i token: A = 0 iff W = 0."""
        logits = raw[..., : self.config.atom_types]
        is_pad_atom = torch.arange(logits.shape[-1], device=raw.device) == 0
        allowed = (W[..., None] > 0) != is_pad_atom
        return torch.log_softmax(logits.masked_fill(~allowed, -math.inf), dim=-1)

    def lattice_params(self, raw: torch.Tensor):
        """Lattice mixture from the raw output at a W token: log-weights (..., Kl), means and standard
        deviations (..., Kl, 6)."""
        return self._lattice_mixture(
            raw[..., self.config.atom_types : self.config.atom_types + self.config.lattice_types]
        )

    def _lattice_mixture(self, lat: torch.Tensor):
        k = self.config.num_lattice_components
        log_weights = torch.log_softmax(lat[..., :k], dim=-1)
        mean = lat[..., k : k + LATTICE_DIM * k].unflatten(-1, (k, LATTICE_DIM))
        std = F.softplus(lat[..., k + LATTICE_DIM * k :]).unflatten(-1, (k, LATTICE_DIM))
        return log_weights, mean, std + self.config.lattice_sigma_min

    def coord_params(self, raw: torch.Tensor):
        """Von Mises mixture from the raw output at the previous token: log-weights, locations (radians) and
        concentrations, each (..., Kx)."""
        k = self.config.num_coord_components
        return torch.log_softmax(raw[..., :k], dim=-1), raw[..., k : 2 * k], F.softplus(raw[..., 2 * k : 3 * k])

    # -- forward --------------------------------------------------------------------------------------------

    def forward(self, G, W, A, XYZ, L=None, output_logits: bool = True, **kwargs) -> CrystalFormerOutput:
        r"""
        Run the model on tokenized crystals. Returns the post-processed output rows (`logits`, the reference's
        `h`) and, when `L` is given, the four log-likelihood terms, their sum and the training loss. Dropout is
        active in training mode (`model.train()`), as in the reference's pretraining; call `model.eval()` for
        exact log-likelihoods. Extra keyword arguments (other collator fields) are ignored.

        `output_logits=False` skips assembling `logits` (the trainers' path): the likelihood is then computed
        from only the output columns each position's term reads, 2.5x less head work and no (B, 5n, 171) rows.
        The likelihood is the same either way (it never reads `logits`).

        If a crystal fills every given site (no padding site to read its lattice from) and `n < n_max`, one
        padding site is appended (exact, the model is causal); then `logits` has `5(n + 1) + 1` rows.
        """
        G, W, A, XYZ, L = self._check_inputs(G, W, A, XYZ, L)
        n = W.shape[1]
        if L is not None and n < self.config.n_max:
            # Add the lattice read-out site when a crystal fills every given site. Off the CPU, without `logits`
            # to shape, add it unconditionally (exact: the model is causal) rather than sync to find out.
            if (W.device.type != "cpu" and not output_logits) or bool(((A != 0).sum(1) >= n).any()):
                W, A, XYZ = F.pad(W, (0, 1)), F.pad(A, (0, 1)), F.pad(XYZ, (0, 0, 0, 1))
        return self._forward_checked(G, W, A, XYZ, L, output_logits)

    def _forward_checked(self, G, W, A, XYZ, L, output_logits: bool) -> CrystalFormerOutput:
        """`forward` on validated tensors: no host syncs, no data-dependent branches (`torch.compile`-able)."""
        n = W.shape[1]
        g = self.transformer.g_embed(G - 1)
        mult = self.symmetry.mult[G[:, None] - 1, W]
        hidden = self.transformer(self.transformer.embed(g, W, A, XYZ, mult))
        sites = hidden.unflatten(1, (n, TOKENS_PER_SITE))  # (B, n, 5, hidden): position 5i + k

        output = CrystalFormerOutput(last_hidden_state=hidden)
        if output_logits:
            output.logits = self._output_rows(self.head(sites), G, W)
        if L is not None:
            self._log_likelihood(output, sites, G, L, XYZ, A, W)
        return output

    def log_prob(self, G, L, XYZ, A, W, output_logits: bool = True) -> CrystalFormerOutput:
        """Log-likelihood of tokenized crystals: `logp_w`, `logp_xyz`, `logp_a`, `logp_l` and `logp`, each (B,)."""
        return self.forward(G=G, W=W, A=A, XYZ=XYZ, L=L, output_logits=output_logits)

    def _head_columns(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Columns [start, stop) of the output head on x: what one kind of position actually predicts."""
        return F.linear(x, self.head.weight[start:stop], self.head.bias[start:stop])

    def _output_rows(self, raw: torch.Tensor, G, W) -> torch.Tensor:
        """The reference's (B, 5n + 1, out) post-processed rows from the raw head output (B, n, 5, out); unused
        columns stay 0."""
        cfg = self.config
        batch, n = W.shape
        rows = raw.new_zeros(batch, n, TOKENS_PER_SITE, cfg.output_size)
        site = torch.arange(1, n, device=raw.device)
        rows[:, 0, 0, : cfg.wyck_types] = self.first_wyckoff_logprobs(G)
        rows[:, 1:, 0, : cfg.wyck_types] = self.wyckoff_logprobs(raw[:, :-1, 4], G[:, None], W[:, :-1], site)
        rows[:, :, 1, : cfg.atom_types] = self.atom_logprobs(raw[:, :, 0], W)
        log_weights, mean, std = self.lattice_params(raw[:, :, 0])
        rows[:, :, 1, cfg.atom_types :][..., : cfg.lattice_types] = torch.cat(
            [log_weights, mean.flatten(-2), std.flatten(-2)], dim=-1
        )
        rows[:, :, 2:, : cfg.coord_types] = torch.cat(self.coord_params(raw[:, :, 1:4]), dim=-1)
        last_row = raw.new_zeros(batch, 1, cfg.output_size)
        last_row[:, 0, : cfg.wyck_types] = self.wyckoff_logprobs(raw[:, -1, 4], G, W[:, -1], n)  # after the last
        return torch.cat([rows.flatten(1, 2), last_row], dim=1)

    def _log_likelihood(self, output: CrystalFormerOutput, sites: torch.Tensor, G, L, XYZ, A, W):
        """The four terms from the trunk output `sites` (B, n, 5, hidden), each term reading only its columns."""
        cfg = self.config
        batch, n = W.shape
        head = self._head_columns

        # W_0 from the space group, W_i from the Z token of site i - 1.
        next_w = self.wyckoff_logprobs(
            head(sites[:, :-1, 4], 0, cfg.wyck_types), G[:, None], W[:, :-1], torch.arange(1, n, device=W.device)
        )
        logp_w = self.first_wyckoff_logprobs(G).gather(-1, W[:, :1]).squeeze(-1)
        logp_w = logp_w + next_w.gather(-1, W[:, 1:, None]).squeeze(-1).sum(-1)
        # A_i from the W token of site i.
        atoms = self.atom_logprobs(head(sites[:, :, 0], 0, cfg.atom_types), W)
        logp_a = atoms.gather(-1, A[..., None]).squeeze(-1).sum(-1)

        # Coordinates: von Mises mixtures from the A, X, Y tokens, scored where the coordinate is not a constant
        # of the position.
        log_weights, loc, kappa = self.coord_params(head(sites[:, :, 1:4], 0, cfg.coord_types))
        coord_lp = von_mises_mixture_log_prob(2 * math.pi * (XYZ - 0.5), log_weights, loc, kappa)
        scored = (W > 0)[..., None] & self.symmetry.fc_mask[G[:, None] - 1, W]
        logp_xyz = torch.where(scored, coord_lp, torch.zeros_like(coord_lp)).sum((1, 2))

        # Lattice: read at the W token of the first padding site (clamped, see `reserve_lattice_site`).
        num_sites = (A != 0).sum(1).clamp(max=n - 1)
        lattice_hidden = sites[torch.arange(batch, device=W.device), num_sites, 0]
        lattice_raw = head(lattice_hidden, cfg.atom_types, cfg.atom_types + cfg.lattice_types)
        lattice_lp = self.lattice_log_prob(*self._lattice_mixture(lattice_raw), L, G)

        output.logp_w, output.logp_a, output.logp_xyz, output.logp_l = logp_w, logp_a, logp_xyz, lattice_lp
        output.logp = logp_w + logp_a + logp_xyz + lattice_lp
        output.loss_w, output.loss_a = -logp_w.mean(), -logp_a.mean()
        output.loss_xyz, output.loss_l = -logp_xyz.mean(), -lattice_lp.mean()
        output.loss = (
            output.loss_xyz
            + cfg.lambda_a * output.loss_a
            + cfg.lambda_w * output.loss_w
            + cfg.lambda_l * output.loss_l
        )

    def lattice_log_prob(self, log_weights, mean, std, L: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """Per-dimension Gaussian-mixture log-likelihood of model-space lattices L (B, 6), summed over the free
        parameters of the crystal system."""
        per_dim = gaussian_mixture_log_prob(L, log_weights, mean, std)
        return torch.where(self.symmetry.lattice_mask[G - 1], per_dim, torch.zeros_like(per_dim)).sum(-1)

    # -- sampling -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        space_group,
        num_samples: int | None = None,
        sampling_options: SamplingOptions | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        max_batch_size: int | None = None,
        **kwargs,
    ):
        r"""
        Sample crystals autoregressively, one space group per sample (see `sampling_crystalformer.py`).

        Args:
            space_group: an int (with `num_samples`) or a (B,) sequence/tensor of space groups 1..230.
            num_samples: number of crystals when `space_group` is an int (default 1).
            sampling_options ([`SamplingOptions`], *optional*): temperature, top_p, first_atom_temperature,
                elements and wyckoff (below), as `generate` takes a `GenerationConfig`; keyword arguments override
                its fields.
            seed / generator: random stream (a `torch.Generator`); the cached and uncached paths draw the same
                numbers for the same seed.
            use_cache: KV-cached decoding (default). `False` runs the reference algorithm: the full
                `5 * n_max`-token sequence through the whole model at every step (slow; for tests).
            max_batch_size: sample in chunks of this many crystals (bounds the KV-cache memory).
            kwargs: the fields of [`SamplingOptions`]:

                - temperature: temperature of every categorical draw, κ/T for coordinates, σ√T for the lattice.
                - top_p: nucleus sampling threshold (computed at T = 1, as the reference does); 1 disables it.
                - elements: allowed elements, the same at every site (list of symbols / atomic numbers), per site
                  (list of such lists, one per site from the first), or a boolean mask (atom_types,),
                  (n_max, atom_types) or (B, n_max, atom_types). An all-empty mask means unconstrained.
                - wyckoff: forced Wyckoff letters: a list ("a", "c", ... or 1, 3, ...) for every sample, or a
                  (B, k) integer array; padded with 0, i.e. exactly these sites. Must be valid for each space group.
                - first_atom_temperature (alias `T1`): temperature of the first element draw.

        Returns:
            [`CrystalSamplerOutput`] with `G`, `W`, `A`, `XYZ`, `L` (model space), `lattice` (Å / degrees),
            `num_atoms`, `num_sites` and the model log-likelihood terms of the samples (`logp_w`, `logp_xyz`,
            `logp_a`, `logp_l`, `logp`, at temperature 1 and without element masks or top-p).
        """
        from .sampling_crystalformer import sample_crystals

        return sample_crystals(
            self,
            space_group,
            num_samples=num_samples,
            sampling_options=sampling_options,
            seed=seed,
            generator=generator,
            use_cache=use_cache,
            max_batch_size=max_batch_size,
            **kwargs,
        )

    @torch.no_grad()
    def mcmc(
        self,
        space_group=None,
        num_chains: int | None = None,
        *,
        initial=None,
        reward=None,
        temperature=1.0,
        inverse_temperature=1.0,
        nsweeps: int = 10,
        mcmc_width: float = 0.1,
        sampling_options: SamplingOptions | None = None,
        seed: int | None = None,
        reward_batch_size: int | None = None,
        score_dependent_coordinates: bool = False,
        **kwargs,
    ):
        r"""
        Metropolis–Hastings chains on the posterior p_base(x) · exp(r(x) / τ), the reference's MCMC (§5.6)
        generalised (see `mcmc_crystalformer.py`): G and W fixed, moves of one site's element (uniform among its
        allowed elements) and coordinates (a von Mises step of width `mcmc_width`, projected by the site's op0),
        `nsweeps` sweeps over the sites; without a reward the lattice is drawn from the model afterwards, with one
        it is moved after every sweep (a proposal from the model, accepted on the reward).

        Args:
            space_group, num_chains: as `sample`'s `space_group`, `num_samples`: the chains start from the model's
                samples (drawn with `sampling_options`, `seed`).
            initial: start from these states instead: anything with batched `G, W, A, XYZ, L` (model space; a
                [`CrystalSamplerOutput`], a dict) or a sequence of objects with per-crystal ones (`CrystalTokens`).
            reward: `None` (the reference's target log p_base) or a callable from a batch of crystals (a
                [`CrystalSamplerOutput`]) to one reward per crystal (`None` / NaN: unscorable, never entered).
            temperature: τ of r / τ; a number or one per sweep (annealing).
            inverse_temperature: β of the whole target β (log p_base + r / τ), a number or one per sweep
                (annealing: β < 1 flattens it; not the RL config's `beta`, which is τ).
            nsweeps: sweeps; a sweep proposes one move per occupied site of each chain.
            mcmc_width: concentration 1 / width² of the von Mises coordinate step (≈ its std in fractional units).
            sampling_options / kwargs: [`SamplingOptions`]; `elements` also restricts the element proposals (per
                site as in `sample`), so the chains sample the base model conditioned on those elements.
            seed: the random stream (initial samples and moves); the same seed gives the same chains.
            reward_batch_size: call `reward` on at most this many crystals at once (default: all of a step).
            score_dependent_coordinates: score coordinates tied to earlier ones (y in x,x,z) as `log_prob` and the
                reference's target do; by default the target is the sampler's own density, which `sample`'s draws
                follow, so that with r ≡ 0 the chains leave them invariant.

        Returns:
            [`CrystalMCMCOutput`]: the final states as [`CrystalSamplerOutput`] (log-likelihood terms of `log_prob`),
            with `reward`, `acceptance` (B, nsweeps), `lattice_accepted`, `logp_trace` and `reward_trace`
            (B, nsweeps + 1), and the `temperature` / `inverse_temperature` schedules.
        """
        from .mcmc_crystalformer import mcmc_crystals

        return mcmc_crystals(
            self,
            space_group,
            num_chains,
            initial=initial,
            reward=reward,
            temperature=temperature,
            inverse_temperature=inverse_temperature,
            nsweeps=nsweeps,
            mcmc_width=mcmc_width,
            sampling_options=sampling_options,
            seed=seed,
            reward_batch_size=reward_batch_size,
            score_dependent_coordinates=score_dependent_coordinates,
            **kwargs,
        )


__all__ = [
    "CrystalFormerForCrystalGeneration",
    "CrystalFormerModel",
    "CrystalFormerOutput",
    "CrystalFormerPreTrainedModel",
    "CrystalFormerKVCache",
]
