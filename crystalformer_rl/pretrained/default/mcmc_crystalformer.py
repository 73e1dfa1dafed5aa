"""Metropolis–Hastings sampling of CrystalFormer's posterior p_base(x) · exp(r(x) / τ) (reference §5.6, generalised).

The chains move the elements and coordinates of crystals whose space group G and Wyckoff letters W stay fixed:

* a step visits one site i (step t of a sweep visits site t, so a sweep is one pass over the occupied sites; a
  chain without site i skips it) and proposes, together, a new element drawn uniformly among the site's allowed
  elements (every element, or the sampler's ``elements`` restriction) and new coordinates: a von Mises draw
  of concentration 1 / ``mcmc_width``² added to each fractional coordinate (so ``mcmc_width`` is about the step's
  standard deviation in fractional units), projected onto the Wyckoff position by its representative operation
  op0 and wrapped into [0, 1) (free coordinates move, constants stay, dependent ones follow, e.g. y := x in x,x,z);
* both proposals are symmetric (op0's row of a free coordinate is the identity), so the step is accepted with
  probability min(1, exp(β (Δ log p_base + Δr / τ))): no Hastings correction;
* without a reward (the reference's chain) the target is log p(W, A, XYZ | G) and the lattice is not part of the
  state: it is drawn from the model once the moves are done. With a reward the lattice is part of the state (the
  reward needs it): the target adds log p(L | G, W, A, XYZ) and r(x) / τ, and after every sweep a lattice move
  proposes L' from the model and accepts it with probability
  min(1, (p(L') / p(L))^(β - 1) · exp(β (r(x') - r(x)) / τ)) (an independence proposal, corrected for β ≠ 1).

log p_base is the density the sampler draws from: as ``model.log_prob`` except that coordinates the sampler does not
draw (the dependent ones, y in x,x,z) are not scored and the lattice density is the sampler's one-component-for-all
mixture. So with r ≡ 0 and β = 1 the chain leaves the distribution of ``model.sample`` invariant.
``score_dependent_coordinates=True`` scores the dependent coordinates as the reference's target does (the two agree
in every space group where no Wyckoff position ties one coordinate to another).

The chains of a batch run in lockstep: a step is one forward pass over the chains that hold its site, and the reward
is called on those proposals in batches. The model imports no reward: ``reward`` is any callable from a batch of
crystals (a [`CrystalSamplerOutput`]: G, W, A, XYZ, L in model space, ``lattice`` in Å / degrees, ``num_atoms``) to
one number per crystal (``None`` / NaN: unscorable, treated as r = -inf, a state the chain never enters).
``crystalformer_rl.sampling.crystal_batch_reward`` makes one from a TRL reward over ``CrystalTokens``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .crystallography import LATTICE_DIM, TRANSLATION_DENOMINATOR, model_to_physical_lattice, symmetrize_lattice
from .kv_cache_and_densities import von_mises_mixture_log_prob
from .sampling_crystalformer import (
    CrystalSamplerOutput,
    SamplingOptions,
    StepGenerators,
    _element_mask,
    sample_categorical,
    sample_von_mises,
)


__all__ = ["CrystalMCMCOutput", "autocorrelation", "mcmc_crystals", "metropolis_accept"]


@dataclass
class CrystalMCMCOutput(CrystalSamplerOutput):
    r"""
    The chains' final states (as [`CrystalSamplerOutput`], with the model log-likelihood terms of `model.log_prob`)
    and their diagnostics.

    Args:
        reward (`torch.Tensor` of shape `(B,)`): the reward of the final states (with a reward).
        acceptance (`torch.Tensor` of shape `(B, nsweeps)`): accepted / proposed moves of each chain in each sweep.
        lattice_accepted (`torch.Tensor` of shape `(B, nsweeps)`, bool): the lattice move after each sweep (with a
            reward; without one the lattice is drawn once at the end).
        logp_trace (`torch.Tensor` of shape `(B, nsweeps + 1)`): log p_base of the state the target scores (W, A,
            XYZ; and L with a reward), at the start and after each sweep.
        reward_trace (`torch.Tensor` of shape `(B, nsweeps + 1)`): the reward at the start and after each sweep.
        temperature, inverse_temperature (`torch.Tensor` of shape `(nsweeps,)`): τ and β of each sweep.
    """

    reward: torch.Tensor | None = None
    acceptance: torch.Tensor | None = None
    lattice_accepted: torch.Tensor | None = None
    logp_trace: torch.Tensor | None = None
    reward_trace: torch.Tensor | None = None
    temperature: torch.Tensor | None = None
    inverse_temperature: torch.Tensor | None = None


def metropolis_accept(log_ratio: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The Metropolis rule: accept where u < min(1, exp(log_ratio)), u uniform in (0, 1] (NaN: reject)."""
    return torch.log(uniform) < log_ratio


def autocorrelation(traces, max_lag: int | None = None) -> np.ndarray:
    """Autocorrelation of traces (chains, T) at lags 0..max_lag, each chain centred on its own mean and the
    covariances averaged over chains (chains with a constant trace count as uncorrelated noise-free: skipped)."""
    x = np.asarray(traces, dtype=np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    if x.size == 0 or x.shape[1] < 2:
        return np.full(1, np.nan)
    x = x - x.mean(axis=1, keepdims=True)
    lags = x.shape[1] - 1 if max_lag is None else min(int(max_lag), x.shape[1] - 1)
    var = (x * x).mean()
    if var == 0:
        return np.full(lags + 1, np.nan)
    return np.array([(x[:, : x.shape[1] - k] * x[:, k:]).mean() / var for k in range(lags + 1)])


def _schedule(value, nsweeps: int, name: str, positive: bool) -> torch.Tensor:
    """A scalar or one value per sweep -> (nsweeps,) float64."""
    values = torch.as_tensor(np.asarray(value, dtype=np.float64)).reshape(-1)
    if values.numel() == 1:
        values = values.expand(nsweeps).clone()
    if values.numel() != nsweeps:
        raise ValueError(f"{name}: give one value or one per sweep ({nsweeps}), got {values.numel()}")
    bad = ~torch.isfinite(values) | ((values <= 0) if positive else (values < 0))
    if bool(bad.any()):
        raise ValueError(f"{name}: {values[bad][0].item()}: use numbers {'> 0' if positive else '>= 0'}")
    return values


def _initial_state(model, initial, space_group, num_chains, options: SamplingOptions, seed):
    """(G, W, A, XYZ, L) tensors on the model's device, padded to n_max sites."""
    if initial is None:
        if space_group is None:
            raise ValueError("give the space group(s) of the chains, or their initial states (initial=)")
        initial = model.sample(space_group, num_samples=num_chains, sampling_options=options, seed=seed)

    def field(name):
        if isinstance(initial, dict):
            return initial[name]
        if hasattr(initial, name):
            return getattr(initial, name)
        return np.stack([np.asarray(_numpy(getattr(item, name))) for item in initial])  # per-crystal tokens

    G, W, A, XYZ, L = (torch.as_tensor(np.asarray(_numpy(field(k)))) for k in ("G", "W", "A", "XYZ", "L"))
    G, W, A, XYZ, L = model._check_inputs(G, W, A, XYZ, L)
    pad = model.config.n_max - W.shape[1]
    W, A, XYZ = (torch.nn.functional.pad(t, p) for t, p in ((W, (0, pad)), (A, (0, pad)), (XYZ, (0, 0, 0, pad))))
    return G, W.clone(), A.clone(), XYZ.clone(), L.clone()


def _numpy(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else x


class _Target:
    """The pieces of the target of a batch of states: log p_base of W, A, XYZ (dependent coordinates as chosen)
    and the lattice mixture the model reads for them."""

    def __init__(self, model, score_dependent_coordinates: bool):
        self.model = model
        tables = model.symmetry
        diagonal = torch.diagonal(tables.op0_x24[..., :3], dim1=-2, dim2=-1)
        # coordinates computed from earlier ones (op0's row has no 1 on the diagonal but is not constant)
        self.dependent = tables.fc_mask & (diagonal == 0) if not score_dependent_coordinates else None

    def __call__(self, G, W, A, XYZ, L):
        model, cfg = self.model, self.model.config
        num_sites = (W > 0).sum(1)
        n = min(int(num_sites.max()) + 1, cfg.n_max)
        W, A, XYZ = W[:, :n], A[:, :n], XYZ[:, :n]
        out = model(G=G, W=W, A=A, XYZ=XYZ, L=L, output_logits=False)
        sites = out.last_hidden_state.unflatten(1, (n, 5))
        logp = out.logp_w + out.logp_a + out.logp_xyz
        if self.dependent is not None:
            dependent = self.dependent[G[:, None] - 1, W] & (W > 0)[..., None]
            if bool(dependent.any()):
                log_weights, loc, kappa = model.coord_params(model.head(sites[:, :, 1:4]))
                lp = von_mises_mixture_log_prob(2 * math.pi * (XYZ - 0.5), log_weights, loc, kappa)
                logp = logp - torch.where(dependent, lp, torch.zeros_like(lp)).sum((1, 2))
        rows = torch.arange(G.shape[0], device=G.device)
        lattice = model.lattice_params(model.head(sites[rows, num_sites.clamp(max=n - 1), 0]))
        return logp.double(), tuple(t.double() for t in lattice)


def _lattice_log_prob(model, L, lattice, G):
    """The density the sampler draws model-space lattices L from: one mixture component for all six parameters,
    marginalised onto the crystal system's free ones (the others are tied or fixed after the draw):
    log Σ_k w_k Π_{j free} N(L_j; μ_kj, σ_kj)."""
    log_weights, mean, std = lattice
    z = (L.double()[:, None, :] - mean) / std
    log_normal = -0.5 * z**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    free = model.symmetry.lattice_mask[G - 1][:, None, :]
    return torch.logsumexp(log_weights + torch.where(free, log_normal, torch.zeros_like(log_normal)).sum(-1), dim=-1)


def _draw_lattice(model, lattice, G, rng: StepGenerators) -> torch.Tensor:
    """A lattice from the model's mixture as `model.sample` draws it at temperature 1 (one component for all six
    parameters, then the crystal system's constraints); float64."""
    log_weights, mean, std = lattice
    component = sample_categorical(log_weights, 1.0, 1.0, rng.next())[:, None, None].expand(-1, 1, LATTICE_DIM)
    noise = torch.randn(G.shape[0], LATTICE_DIM, generator=rng.next(), device=G.device, dtype=torch.float64)
    drawn = mean.gather(1, component)[:, 0] + std.gather(1, component)[:, 0] * noise
    return symmetrize_lattice(drawn, model.symmetry.crystal_system[G - 1], degrees=False)


def _batch(model, G, W, A, XYZ, L) -> CrystalSamplerOutput:
    """A batch of states as the reward sees it (fresh tensors: a reward may keep them)."""
    num_atoms = model.symmetry.mult[G[:, None] - 1, W].sum(-1)
    system = model.symmetry.crystal_system[G - 1]
    return CrystalSamplerOutput(
        G=G.clone(),
        W=W.clone(),
        A=A.clone(),
        XYZ=XYZ.clone(),
        L=L.clone(),
        lattice=symmetrize_lattice(model_to_physical_lattice(L, num_atoms), system, degrees=True),
        num_atoms=num_atoms,
        num_sites=(W > 0).sum(-1),
    )


def _rewards(reward, model, G, W, A, XYZ, L, batch_size) -> torch.Tensor:
    """The reward of each state, in batches of ``batch_size``; ``None`` / NaN -> -inf."""
    values = []
    size = G.shape[0] if not batch_size else int(batch_size)
    for start in range(0, G.shape[0], max(size, 1)):
        part = slice(start, start + size)
        result = reward(_batch(model, G[part], W[part], A[part], XYZ[part], L[part]))
        result = [
            float("nan") if r is None else float(r) for r in (_numpy(result).tolist() if _is_array(result) else result)
        ]
        if len(result) != G[part].shape[0]:
            raise ValueError(f"the reward returned {len(result)} values for {G[part].shape[0]} crystals")
        values += result
    rewards = torch.tensor(values, dtype=torch.float64, device=G.device)
    return torch.where(torch.isnan(rewards), torch.full_like(rewards, -math.inf), rewards)


def _is_array(x) -> bool:
    return torch.is_tensor(x) or isinstance(x, np.ndarray)


@torch.no_grad()
def mcmc_crystals(
    model,
    space_group=None,
    num_chains: int | None = None,
    *,
    initial=None,
    reward: Callable[[CrystalSamplerOutput], Sequence[float | None]] | None = None,
    temperature=1.0,
    inverse_temperature=1.0,
    nsweeps: int = 10,
    mcmc_width: float = 0.1,
    sampling_options: SamplingOptions | None = None,
    seed: int | None = None,
    reward_batch_size: int | None = None,
    score_dependent_coordinates: bool = False,
    **kwargs,
) -> CrystalMCMCOutput:
    """See [`CrystalFormerForCrystalGeneration.mcmc`]."""
    options = SamplingOptions.from_kwargs(sampling_options, **kwargs)
    nsweeps = int(nsweeps)
    if nsweeps < 0:
        raise ValueError(f"nsweeps: {nsweeps}: use at least 0")
    if not (math.isfinite(mcmc_width) and mcmc_width > 0):
        raise ValueError(f"mcmc_width: {mcmc_width}: use a number > 0")
    taus = _schedule(temperature, nsweeps, "temperature", positive=True)
    betas = _schedule(inverse_temperature, nsweeps, "inverse_temperature", positive=False)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    cfg, tables = model.config, model.symmetry

    was_training = model.training
    model.eval()
    try:
        G, W, A, XYZ, L = _initial_state(model, initial, space_group, num_chains, options, seed)
        batch, device = G.shape[0], G.device
        allowed = _element_mask(options.elements, batch, cfg.n_max, cfg.atom_types, device)
        if allowed is None:
            allowed = torch.ones(batch, cfg.n_max, cfg.atom_types, dtype=torch.bool, device=device)
        allowed = allowed.clone()
        allowed[..., 0] = False  # a real site never proposes padding
        element_logits = torch.zeros(allowed.shape, dtype=torch.float64, device=device).masked_fill(
            ~allowed, -math.inf
        )
        rng = StepGenerators((seed, 1), device)
        target = _Target(model, score_dependent_coordinates)
        with_lattice = reward is not None

        logp, lattice = target(G, W, A, XYZ, L)
        if with_lattice:
            logp = logp + _lattice_log_prob(model, L, lattice, G)
            r = _rewards(reward, model, G, W, A, XYZ, L, reward_batch_size)
        else:
            r = torch.zeros(batch, dtype=torch.float64, device=device)
        logp_trace, reward_trace = [logp.clone()], [r.clone()]
        acceptance = torch.zeros(batch, nsweeps, dtype=torch.float64, device=device)
        lattice_accepted = torch.zeros(batch, nsweeps, dtype=torch.bool, device=device)
        occupied = W > 0
        num_sites = occupied.sum(1)
        last_site = int(num_sites.max())

        for sweep in range(nsweeps):
            b, tau = float(betas[sweep]), float(taus[sweep])
            accepted = torch.zeros(batch, dtype=torch.float64, device=device)
            for site in range(last_site):
                rows = occupied[:, site].nonzero()[:, 0]
                g, w = G[rows], W[rows, site]
                a_new = sample_categorical(element_logits[rows, site], 1.0, 1.0, rng.next())
                shift = sample_von_mises(
                    torch.zeros(rows.shape[0], 3, device=device, dtype=torch.float64),
                    torch.full((rows.shape[0], 3), 1 / mcmc_width**2, device=device, dtype=torch.float64),
                    rng.next(),
                )
                op0 = tables.op0_x24[g - 1, w].double() / TRANSLATION_DENOMINATOR  # (b, 3, 4)
                moved = XYZ[rows, site].double() + shift
                projected = torch.einsum("bij,bj->bi", op0[..., :3], moved) + op0[..., 3]
                xyz_new = (projected - torch.floor(projected)).to(XYZ.dtype)
                xyz_new = torch.where(xyz_new >= 1, xyz_new - 1, xyz_new)

                A_prop, XYZ_prop = A[rows].clone(), XYZ[rows].clone()
                A_prop[:, site], XYZ_prop[:, site] = a_new, xyz_new
                logp_prop, lattice_prop = target(g, W[rows], A_prop, XYZ_prop, L[rows])
                log_ratio = logp_prop - logp[rows]
                if with_lattice:
                    logp_prop = logp_prop + _lattice_log_prob(model, L[rows], lattice_prop, g)
                    r_prop = _rewards(reward, model, g, W[rows], A_prop, XYZ_prop, L[rows], reward_batch_size)
                    log_ratio = logp_prop - logp[rows] + (r_prop - r[rows]) / tau
                uniform = 1 - torch.rand(rows.shape[0], generator=rng.next(), device=device, dtype=torch.float64)
                accept = metropolis_accept(b * log_ratio, uniform)
                take = rows[accept]
                A[take], XYZ[take] = A_prop[accept], XYZ_prop[accept]
                logp[take] = logp_prop[accept]
                lattice = tuple(_update(t, rows, accept, p) for t, p in zip(lattice, lattice_prop))
                if with_lattice:
                    r[take] = r_prop[accept]
                accepted[take] += 1
            acceptance[:, sweep] = accepted / num_sites.clamp_min(1)

            if with_lattice:  # an independence move of the lattice, proposed from the model
                L_prop = _draw_lattice(model, lattice, G, rng).to(L.dtype)
                lp_old = _lattice_log_prob(model, L, lattice, G)
                lp_new = _lattice_log_prob(model, L_prop, lattice, G)
                r_prop = _rewards(reward, model, G, W, A, XYZ, L_prop, reward_batch_size)
                log_ratio = b * (r_prop - r) / tau
                if b != 1:  # the proposal is the model's conditional: only its power β - 1 remains
                    log_ratio = log_ratio + (b - 1) * (lp_new - lp_old)
                uniform = 1 - torch.rand(batch, generator=rng.next(), device=device, dtype=torch.float64)
                accept = metropolis_accept(log_ratio, uniform)
                L[accept], r[accept] = L_prop[accept], r_prop[accept]
                logp[accept] += (lp_new - lp_old)[accept]
                lattice_accepted[:, sweep] = accept
            logp_trace.append(logp.clone())
            reward_trace.append(r.clone())

        if not with_lattice:  # the reference: the lattice drawn from the model given the final atoms
            L = _draw_lattice(model, lattice, G, rng).to(L.dtype)
        final = model.log_prob(G, L, XYZ, A, W, output_logits=False)
    finally:
        model.train(was_training)

    state = _batch(model, G, W, A, XYZ, L)
    return CrystalMCMCOutput(
        **{k: state[k] for k in state.keys()},
        logp_w=final.logp_w,
        logp_xyz=final.logp_xyz,
        logp_a=final.logp_a,
        logp_l=final.logp_l,
        logp=final.logp,
        reward=r if with_lattice else None,
        acceptance=acceptance,
        lattice_accepted=lattice_accepted if with_lattice else None,
        logp_trace=torch.stack(logp_trace, dim=1),
        reward_trace=torch.stack(reward_trace, dim=1) if with_lattice else None,
        temperature=taus,
        inverse_temperature=betas,
    )


def _update(current: torch.Tensor, rows: torch.Tensor, accept: torch.Tensor, proposed: torch.Tensor) -> torch.Tensor:
    """``current`` with rows ``rows[accept]`` replaced by ``proposed[accept]``."""
    current = current.clone()
    current[rows[accept]] = proposed[accept]
    return current
