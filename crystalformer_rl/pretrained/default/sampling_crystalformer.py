"""Autoregressive sampling for CrystalFormer, with a KV cache.

All samples of a batch move in lockstep through the ``5 * n_max`` token positions, each with its own space
group. For site ``i``: draw W_i from the row of the previous Z token (or the first-letter MLP), feed W_i and
read the element and lattice distributions, draw A_i, feed it, then for each of x, y, z draw a von Mises
mixture sample, project it onto the Wyckoff position with its representative operation op0 (fixed and
dependent coordinates are overwritten, reference §4) and feed it. A sample stops at its first padding site,
where its lattice distribution is read; finished samples leave the batch (and the KV cache), and the loop
ends when none is left. The lattice is drawn as the reference draws it: one mixture component for all six
parameters, then symmetrised by crystal system.

Full sequences: when ``config.reserve_lattice_site`` (the default) the last site's Wyckoff distribution only
allows padding, so every sample has a lattice row. Otherwise a sample filling all ``n_max`` sites reads its
lattice from the last site's row, as the reference does.

Random numbers: every draw (one per token and one for the lattice) uses its own `torch.Generator`, seeded from
(seed, chunk, draw index). The cached and uncached paths therefore draw identical numbers, even if an
earlier rejection-sampling loop ran a different number of rounds.

The returned log-likelihood terms are those of the model at temperature 1, without element masks or top-p,
computed from the same output rows the sampler used (equal to `model.log_prob` on the returned tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from transformers.utils import ModelOutput

from .crystallography import (
    LATTICE_DIM,
    LETTERS,
    NUM_SPACE_GROUPS,
    TRANSLATION_DENOMINATOR,
    atomic_number,
    letter_to_index,
    model_to_physical_lattice,
    symmetrize_lattice,
)
from .kv_cache_and_densities import CrystalFormerKVCache, gaussian_mixture_log_prob, von_mises_mixture_log_prob


@dataclass
class CrystalSamplerOutput(ModelOutput):
    r"""
    Crystals drawn by [`CrystalFormerForCrystalGeneration.sample`], in the tokenizer's layout.

    Args:
        G (`torch.LongTensor` of shape `(B,)`): space groups.
        W (`torch.LongTensor` of shape `(B, n_max)`): Wyckoff letters (0 = padding, 1 = 'a').
        A (`torch.LongTensor` of shape `(B, n_max)`): atomic numbers (0 = padding).
        XYZ (`torch.Tensor` of shape `(B, n_max, 3)`): fractional coordinates of each orbit's representative.
        L (`torch.Tensor` of shape `(B, 6)`): model-space lattice (lengths / num_atoms^(1/3) in Å, radians).
        lattice (`torch.Tensor` of shape `(B, 6)`): physical lattice a, b, c (Å), alpha, beta, gamma (degrees).
            Nothing clips the Gaussian draws: lengths can be negative for a poorly trained model.
        num_atoms (`torch.LongTensor` of shape `(B,)`): atoms in the conventional cell (sum of multiplicities).
        num_sites (`torch.LongTensor` of shape `(B,)`): occupied Wyckoff sites.
        logp_w, logp_xyz, logp_a, logp_l, logp (`torch.Tensor` of shape `(B,)`): model log-likelihood terms.
    """

    G: torch.Tensor | None = None
    W: torch.Tensor | None = None
    A: torch.Tensor | None = None
    XYZ: torch.Tensor | None = None
    L: torch.Tensor | None = None
    lattice: torch.Tensor | None = None
    num_atoms: torch.Tensor | None = None
    num_sites: torch.Tensor | None = None
    logp_w: torch.Tensor | None = None
    logp_xyz: torch.Tensor | None = None
    logp_a: torch.Tensor | None = None
    logp_l: torch.Tensor | None = None
    logp: torch.Tensor | None = None


@dataclass
class SamplingOptions:
    r"""
    How [`CrystalFormerForCrystalGeneration.sample`] draws crystals, as a `GenerationConfig` says how `generate`
    does: ``model.sample(groups, sampling_options=options, **kwargs)``, keyword arguments overriding the options.
    The help strings are also the options' ``crystalformer-rl sample`` docs (with their short flags).

    ``elements`` also takes atomic numbers, per-site lists or boolean masks and ``wyckoff`` letter indices or a
    (B, k) array (see ``sample``); the command line gives symbols and letters.
    """

    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Temperature of every categorical draw, κ/T for the coordinates, σ√T for the lattice (> 0).",
            "aliases": ["-T"],
        },
    )
    top_p: float = field(
        default=1.0,
        metadata={"help": "Nucleus-sampling threshold of the categorical draws, in (0, 1]; 1 disables it."},
    )
    first_atom_temperature: float | None = field(
        default=None,
        metadata={"help": "Temperature of the first element draw (> 0; alias T1); default: temperature."},
    )
    elements: list[str] | None = field(
        default=None,
        metadata={"help": "Allowed elements at every site, e.g. Li Fe P O; default: any.", "aliases": ["-e"]},
    )
    wyckoff: list[str] | None = field(
        default=None,
        metadata={
            "help": "Forced Wyckoff letters, e.g. a c f: exactly these sites, valid for each space group.",
            "aliases": ["-w"],
        },
    )

    def __post_init__(self):
        first, positive = self.first_atom_temperature, "use a number > 0"
        for name, value, valid, rule in (
            ("temperature", self.temperature, self.temperature > 0, positive),
            ("first_atom_temperature", first, first is None or first > 0, positive),
            ("top_p", self.top_p, 0 < self.top_p <= 1, "use a number in (0, 1]" if self.top_p > 0 else positive),
        ):
            if not valid:
                raise ValueError(f"{self._option(name)}: {value}: {rule}")
        for symbol in _element_symbols(self.elements):
            try:
                atomic_number(symbol)
            except ValueError:
                raise ValueError(
                    f"{self._option('elements')}: unknown element symbol {symbol!r} (e.g. Li, Fe, O)"
                ) from None

    @classmethod
    def _option(cls, name: str) -> str:
        """How an error message names an option (a command line names its flag)."""
        return name

    @classmethod
    def from_kwargs(cls, sampling_options: SamplingOptions | None = None, **kwargs) -> SamplingOptions:
        """``sampling_options`` (any instance, subclasses included; default: the defaults) with ``kwargs``
        overriding its fields; ``T1`` is an alias of ``first_atom_temperature``."""
        if "T1" in kwargs:
            t1, first = kwargs.pop("T1"), kwargs.get("first_atom_temperature")
            if t1 is not None:
                if first is not None and first != t1:
                    raise ValueError("give either first_atom_temperature or its alias T1, not both")
                kwargs["first_atom_temperature"] = t1
        names = [f.name for f in fields(SamplingOptions)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(f"unknown sampling option(s) {', '.join(unknown)}; the options are {', '.join(names)}")
        given = {} if sampling_options is None else {name: getattr(sampling_options, name) for name in names}
        return cls(**{**given, **kwargs})


def _element_symbols(elements) -> list[str]:
    """The symbols among ``elements`` (a list, or per-site lists); masks and atomic numbers are checked later."""
    if not isinstance(elements, (list, tuple)):
        return []
    items = [x for item in elements for x in (item if isinstance(item, (list, tuple, set)) else [item])]
    return [x for x in items if isinstance(x, str)]


# ---------------------------------------------------------------------------------------------------------
# Elementary draws
# ---------------------------------------------------------------------------------------------------------


class StepGenerators:
    """One fresh `torch.Generator` per draw, seeded from (key..., draw index) through numpy's SeedSequence."""

    def __init__(self, key: tuple[int, ...], device):
        self.key = [int(k) % 2**64 for k in key]
        self.device = torch.device(device)
        self.step = 0

    def next(self) -> torch.Generator:
        state = np.random.SeedSequence([*self.key, self.step]).generate_state(2, np.uint32)
        self.step += 1
        generator = torch.Generator(device=self.device)
        generator.manual_seed((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))
        return generator


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely entries whose probability (at T = 1) exceeds `top_p`: every entry
    after the first one at which the cumulative probability exceeds `top_p` becomes -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop_sorted = (probs.cumsum(-1) - probs) > top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def sample_categorical(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator):
    """Draw one index per row of `logits` (..., K) (-inf = impossible) by the Gumbel-max trick."""
    if logits.device.type == "cpu":
        if torch.isnan(logits).any():
            raise FloatingPointError("NaN in the model's logits while sampling (check the weights and inputs)")
    else:  # the same check without a host sync per token (fails as a device-side assert)
        torch._assert_async(~torch.isnan(logits).any(), "NaN in the model's logits while sampling")
    logits = top_p_filter(logits.double(), top_p) / temperature
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform))
    return (logits + gumbel).argmax(dim=-1)


def sample_von_mises(loc, concentration, generator: torch.Generator, max_rounds: int = 100, block: int = 4):
    """Von Mises draws by Best & Fisher's (1979) rejection sampler with a wrapped-Cauchy envelope, vectorised.

    At most `max_rounds` proposals per sample (as the reference; an unaccepted lane keeps its last proposal).
    Proposals are drawn `block` rounds at a time. Returns angles in [-pi, pi) (float64).
    """
    kappa = concentration.double().clamp_min(1e-12)
    loc = loc.double()
    tau = 1 + torch.sqrt(1 + 4 * kappa**2)
    rho = (tau - torch.sqrt(2 * tau)) / (2 * kappa)
    s = torch.where(kappa < 1.2e-4, 1 / kappa, (1 + rho**2) / (2 * rho))  # avoid cancellation for small κ

    theta = torch.zeros_like(kappa)
    done = torch.zeros_like(kappa, dtype=torch.bool)
    for _ in range(0, max_rounds, block):
        u = torch.rand((block, 3, *kappa.shape), generator=generator, device=kappa.device, dtype=torch.float64)
        z = torch.cos(math.pi * u[:, 0])
        f = (1 + s * z) / (s + z)
        c = kappa * (s - f)
        accept = (c * (2 - c) - u[:, 1] > 0) | (torch.log(c / u[:, 1]) + 1 - c >= 0)
        proposal = torch.sign(u[:, 2] - 0.5) * torch.acos(f.clamp(-1, 1))
        first = accept.to(torch.int8).argmax(dim=0, keepdim=True)
        accepted = accept.any(dim=0)
        take = accepted & ~done
        theta = torch.where(take, proposal.gather(0, first)[0], theta)
        theta = torch.where(done | accepted, theta, proposal[-1])
        done |= accepted
        if bool(done.all()):
            break
    return torch.remainder(theta + loc + math.pi, 2 * math.pi) - math.pi


# ---------------------------------------------------------------------------------------------------------
# Input parsing
# ---------------------------------------------------------------------------------------------------------


def _space_groups(space_group, num_samples, device) -> torch.Tensor:
    if isinstance(space_group, (int, np.integer)) or (torch.is_tensor(space_group) and space_group.dim() == 0):
        G = torch.full((1 if num_samples is None else int(num_samples),), int(space_group), dtype=torch.long)
    else:
        G = torch.as_tensor(np.asarray(space_group.cpu() if torch.is_tensor(space_group) else space_group))
        G = G.to(torch.long).reshape(-1)
        if num_samples is not None and num_samples != G.shape[0]:
            if G.shape[0] != 1:
                raise ValueError(f"num_samples={num_samples} but {G.shape[0]} space groups were given")
            G = G.expand(int(num_samples)).clone()
    if G.numel() == 0:
        raise ValueError("nothing to sample: no space group given / num_samples = 0")
    bad = (G < 1) | (G > NUM_SPACE_GROUPS)
    if bool(bad.any()):
        raise ValueError(f"space groups must be in 1..{NUM_SPACE_GROUPS}, got {G[bad][:5].tolist()}")
    return G.to(device)


def _atomic_number(element, atom_types: int) -> int:
    if isinstance(element, str):
        z = atomic_number(element)
    else:
        z = int(element)
    if not 1 <= z < atom_types:
        raise ValueError(f"atomic number {z} is outside 1..{atom_types - 1}")
    return z


def _element_mask(elements, batch: int, n_max: int, atom_types: int, device) -> torch.Tensor | None:
    """(B, n_max, atom_types) boolean mask of allowed elements, column 0 (padding) always allowed."""
    if elements is None:
        return None
    array = elements.cpu().numpy() if torch.is_tensor(elements) else elements
    if isinstance(array, np.ndarray) and array.dtype == bool:
        mask = torch.from_numpy(array.copy())
        if mask.shape[-1] != atom_types or mask.dim() > 3:
            raise ValueError(f"an element mask must end with atom_types={atom_types}, got shape {tuple(mask.shape)}")
        if mask.dim() == 1:
            mask = mask.expand(n_max, atom_types)
        if mask.dim() == 2:
            if mask.shape[0] != n_max:
                raise ValueError(f"a per-site element mask must have n_max={n_max} rows, got {mask.shape[0]}")
            mask = mask.expand(batch, n_max, atom_types)
        if mask.shape[:2] != (batch, n_max):
            raise ValueError(f"a per-sample element mask must be ({batch}, {n_max}, {atom_types})")
        mask = mask.clone()
    else:
        items = list(array)
        per_site = any(isinstance(item, (list, tuple, set, np.ndarray)) for item in items)
        site_lists = items if per_site else [items] * n_max
        if len(site_lists) > n_max:
            raise ValueError(f"element lists for {len(site_lists)} sites, but n_max = {n_max}")
        mask = torch.zeros(n_max, atom_types, dtype=torch.bool)
        for site, allowed in enumerate(site_lists):
            for element in allowed:
                mask[site, _atomic_number(element, atom_types)] = True
        mask = mask.expand(batch, n_max, atom_types).clone()
    unconstrained = ~mask[..., 1:].any(-1)  # an all-empty mask means "no constraint"
    mask[unconstrained] = True
    mask[..., 0] = True
    return mask.to(device)


def _forced_wyckoff(wyckoff, G: torch.Tensor, model) -> torch.Tensor | None:
    """(B, n_max) forced letters (padded with 0), validated against each sample's space group."""
    if wyckoff is None:
        return None
    n_max = model.config.n_max
    array = wyckoff.cpu().numpy() if torch.is_tensor(wyckoff) else wyckoff
    if isinstance(array, str):
        raise ValueError(f"give Wyckoff letters as a list (e.g. list({array!r})), not a string")
    per_sample = (isinstance(array, np.ndarray) and array.ndim == 2) or (
        isinstance(array, (list, tuple)) and any(isinstance(row, (list, tuple, np.ndarray)) for row in array)
    )
    if per_sample:
        rows = [list(row) for row in array]
        if len(rows) != G.shape[0]:
            raise ValueError(f"wyckoff has {len(rows)} rows for {G.shape[0]} samples")
    else:
        rows = [list(array)] * G.shape[0]

    def index(letter) -> int:
        if isinstance(letter, str):
            return letter_to_index(letter)
        return int(letter)

    W = torch.zeros(G.shape[0], n_max, dtype=torch.long)
    limit = n_max - 1 if model.config.reserve_lattice_site else n_max
    for row, letters in enumerate(rows):
        letters = [index(letter) for letter in letters]
        while letters and letters[-1] == 0:
            letters.pop()
        if len(letters) > limit:
            raise ValueError(f"{len(letters)} forced Wyckoff sites, but at most {limit} fit (n_max = {n_max})")
        W[row, : len(letters)] = torch.tensor(letters, dtype=torch.long)

    tables = model.symmetry
    W = W.to(G.device)
    wmax = tables.wmax[G - 1]
    ok = tables.first_w_allowed[G - 1, W[:, 0]]
    for site in range(1, n_max):
        ok &= tables.next_w_allowed[G - 1, W[:, site - 1], W[:, site]] | (W[:, site] == 0) & (W[:, site - 1] == 0)
        if model.config.reserve_lattice_site and site == n_max - 1:
            ok &= W[:, site] == 0
    if not bool(ok.all()):
        row = int((~ok).nonzero()[0])
        g, letters = int(G[row]), [LETTERS[w] for w in W[row].tolist() if w > 0]
        raise ValueError(
            f"Wyckoff letters {letters} are not a valid sequence for space group {g} (positions "
            f"a..{LETTERS[int(wmax[row])]}): there must be at least one site, letters must exist in the group, "
            "must not decrease, and a position without free coordinates cannot repeat"
        )
    return W


# ---------------------------------------------------------------------------------------------------------
# Decoders: feed one token to every active sample, return the raw head output at that position
# ---------------------------------------------------------------------------------------------------------


class CachedDecoder:
    """Incremental decoding with per-layer key/value buffers: one position per call."""

    def __init__(self, model, G: torch.Tensor):
        self.model = model
        self.G = G
        self.g = model.transformer.g_embed(G - 1)
        self.cache = CrystalFormerKVCache(model.config.num_hidden_layers, max_length=model.config.max_positions)

    def feed(self, kind: int, value: torch.Tensor) -> torch.Tensor:
        mult = self.model.symmetry.mult[self.G - 1, value] if kind == 0 else None
        x = self.model.transformer.embed_token(kind, self.g, value, mult)[:, None, :]
        hidden = self.model.transformer(x, cache=self.cache)
        return self.model.head(hidden[:, 0])

    def select(self, keep: torch.Tensor):
        self.G, self.g = self.G[keep], self.g[keep]
        self.cache.select(keep)


class FullSequenceDecoder:
    """The reference algorithm, without a cache: at every step the whole `5 * n_max`-token sequence (future
    positions zero) goes through the model and the row of the current position is read."""

    def __init__(self, model, G: torch.Tensor):
        self.model = model
        self.G = G
        n_max = model.config.n_max
        self.W = torch.zeros(G.shape[0], n_max, dtype=torch.long, device=G.device)
        self.A = torch.zeros_like(self.W)
        self.XYZ = torch.zeros(G.shape[0], n_max, 3, dtype=model.dtype, device=G.device)
        self.position = 0

    def feed(self, kind: int, value: torch.Tensor) -> torch.Tensor:
        site = self.position // 5
        if kind == 0:
            self.W[:, site] = value
        elif kind == 1:
            self.A[:, site] = value
        else:
            self.XYZ[:, site, kind - 2] = value
        transformer = self.model.transformer
        mult = self.model.symmetry.mult[self.G[:, None] - 1, self.W]
        hidden = transformer(transformer.embed(transformer.g_embed(self.G - 1), self.W, self.A, self.XYZ, mult))
        raw = self.model.head(hidden[:, self.position])
        self.position += 1
        return raw

    def select(self, keep: torch.Tensor):
        self.G, self.W, self.A, self.XYZ = self.G[keep], self.W[keep], self.A[keep], self.XYZ[keep]


# ---------------------------------------------------------------------------------------------------------
# The sampling loop
# ---------------------------------------------------------------------------------------------------------


def sample_crystals(
    model,
    space_group,
    num_samples=None,
    sampling_options: SamplingOptions | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    max_batch_size: int | None = None,
    **kwargs,
) -> CrystalSamplerOutput:
    """See [`CrystalFormerForCrystalGeneration.sample`]; ``kwargs`` override fields of ``sampling_options``."""
    options = SamplingOptions.from_kwargs(sampling_options, **kwargs)
    temperature, top_p, elements, wyckoff = options.temperature, options.top_p, options.elements, options.wyckoff
    first_atom_temperature = options.first_atom_temperature
    cfg = model.config
    G = _space_groups(space_group, num_samples, model.device)
    batch = G.shape[0]
    element_mask = _element_mask(elements, batch, cfg.n_max, cfg.atom_types, model.device)
    forced_w = _forced_wyckoff(wyckoff, G, model)
    if generator is not None:
        base_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    elif seed is not None:
        base_seed = int(seed)
    else:
        base_seed = int(torch.randint(0, 2**62, (1,)))
    chunk = batch if not max_batch_size else int(max_batch_size)

    was_training = model.training
    model.eval()
    try:
        outputs = []
        for index, start in enumerate(range(0, batch, chunk)):
            part = slice(start, start + chunk)
            outputs.append(
                _sample_chunk(
                    model,
                    G[part],
                    None if element_mask is None else element_mask[part],
                    None if forced_w is None else forced_w[part],
                    temperature,
                    temperature if first_atom_temperature is None else first_atom_temperature,
                    top_p,
                    StepGenerators((base_seed, index), model.device),
                    use_cache,
                )
            )
    finally:
        model.train(was_training)
    if len(outputs) == 1:
        return outputs[0]
    return CrystalSamplerOutput(**{key: torch.cat([o[key] for o in outputs]) for key in outputs[0].keys()})


def _sample_chunk(model, G, element_mask, forced_w, temperature, first_temperature, top_p, rng, use_cache):
    cfg = model.config
    batch, n_max, device, dtype = G.shape[0], cfg.n_max, G.device, model.dtype
    tables = model.symmetry
    W = torch.zeros(batch, n_max, dtype=torch.long, device=device)
    A = torch.zeros_like(W)
    XYZ = torch.zeros(batch, n_max, 3, dtype=dtype, device=device)
    logp_w, logp_a, logp_xyz = (torch.zeros(batch, dtype=dtype, device=device) for _ in range(3))
    k_lat = cfg.num_lattice_components
    lattice_log_weights = torch.zeros(batch, k_lat, dtype=dtype, device=device)
    lattice_mean = torch.zeros(batch, k_lat, LATTICE_DIM, dtype=dtype, device=device)
    lattice_std = torch.ones_like(lattice_mean)

    decoder = CachedDecoder(model, G) if use_cache else FullSequenceDecoder(model, G)
    active = torch.arange(batch, device=device)  # rows of the batch still being sampled
    G_active = G
    w_logprobs = model.first_wyckoff_logprobs(G)
    for site in range(n_max):
        # -- Wyckoff letter
        if forced_w is None:
            w = sample_categorical(w_logprobs, temperature, top_p, rng.next())
        else:
            w = forced_w[active, site]
        logp_w[active] += w_logprobs.gather(-1, w[:, None])[:, 0]
        W[active, site] = w
        raw = decoder.feed(0, w)

        # -- samples reaching their first padding site read their lattice here and leave the batch; at the last
        # site everyone reads it here (without `reserve_lattice_site`, a full crystal uses this row, like JAX)
        finished = w == 0
        reads_lattice = finished if site < n_max - 1 else torch.ones_like(finished)
        if bool(reads_lattice.any()):
            log_weights, mean, std = model.lattice_params(raw[reads_lattice])
            rows = active[reads_lattice]
            dtype = lattice_mean.dtype  # under bf16 autocast the head's outputs are bf16; the buffers stay float32
            lattice_log_weights[rows] = log_weights.to(dtype)
            lattice_mean[rows], lattice_std[rows] = mean.to(dtype), std.to(dtype)
        if bool(finished.any()):
            if bool(finished.all()):
                break
            keep = (~finished).nonzero()[:, 0]
            active, G_active, w, raw = active[keep], G_active[keep], w[keep], raw[keep]
            decoder.select(keep)

        # -- element
        a_logprobs = model.atom_logprobs(raw, w)
        a_logits = a_logprobs
        if element_mask is not None:
            a_logits = a_logprobs.masked_fill(~element_mask[active, site], -math.inf)
        a = sample_categorical(a_logits, first_temperature if site == 0 else temperature, top_p, rng.next())
        logp_a[active] += a_logprobs.gather(-1, a[:, None])[:, 0]
        A[active, site] = a
        raw = decoder.feed(1, a)

        # -- coordinates, projected onto the Wyckoff position by its representative operation
        op0 = tables.op0_x24[G_active - 1, w].double() / TRANSLATION_DENOMINATOR  # (b, 3, 4)
        scored = tables.fc_mask[G_active - 1, w]  # (b, 3)
        xyz = torch.zeros(w.shape[0], 3, dtype=torch.float64, device=device)
        for axis in range(3):
            log_weights, loc, kappa = model.coord_params(raw)
            component = sample_categorical(log_weights, temperature, top_p, rng.next())[:, None]
            generator = rng.next()
            theta = sample_von_mises(
                loc.gather(-1, component)[:, 0], kappa.gather(-1, component)[:, 0] / temperature, generator
            )
            xyz[:, axis] = (theta + math.pi) / (2 * math.pi)
            projected = (op0[:, axis, :3] * xyz).sum(-1) + op0[:, axis, 3]
            projected = projected - torch.floor(projected)
            value = projected.to(dtype)
            value = torch.where(value >= 1, value - 1, value)
            xyz[:, axis] = value.double()
            XYZ[active, site, axis] = value
            lp = von_mises_mixture_log_prob(2 * math.pi * (value - 0.5), log_weights, loc, kappa)
            logp_xyz[active] += torch.where(scored[:, axis], lp, torch.zeros_like(lp))
            if site < n_max - 1 or axis < 2:  # the last Z token would only predict a letter beyond n_max
                raw = decoder.feed(2 + axis, value)
        if site < n_max - 1:
            w_logprobs = model.wyckoff_logprobs(raw, G_active, w, site + 1)

    # -- lattice: one component for all six parameters, then the crystal system's constraints
    component = sample_categorical(lattice_log_weights, temperature, top_p, rng.next())
    noise = torch.randn(batch, LATTICE_DIM, generator=rng.next(), device=device, dtype=torch.float64)
    take = component[:, None, None].expand(-1, 1, LATTICE_DIM)
    mean = lattice_mean.double().gather(1, take)[:, 0]
    std = lattice_std.double().gather(1, take)[:, 0]
    crystal_system = tables.crystal_system[G - 1]
    L = symmetrize_lattice(mean + std * math.sqrt(temperature) * noise, crystal_system, degrees=False).to(dtype)
    per_dim = gaussian_mixture_log_prob(L, lattice_log_weights, lattice_mean, lattice_std)
    logp_l = torch.where(tables.lattice_mask[G - 1], per_dim, torch.zeros_like(per_dim)).sum(-1)

    num_atoms = tables.mult[G[:, None] - 1, W].sum(-1)
    return CrystalSamplerOutput(
        G=G,
        W=W,
        A=A,
        XYZ=XYZ,
        L=L,
        lattice=symmetrize_lattice(model_to_physical_lattice(L, num_atoms), crystal_system, degrees=True),
        num_atoms=num_atoms,
        num_sites=(W > 0).sum(-1),
        logp_w=logp_w,
        logp_xyz=logp_xyz,
        logp_a=logp_a,
        logp_l=logp_l,
        logp=logp_w + logp_xyz + logp_a + logp_l,
    )
