"""``crystalformer-rl mcmc``: Metropolis–Hastings chains on p_base(x) · exp(r(x) / τ) (``model.mcmc``), started from
the model's own samples; writes the final states as ``sample`` writes its crystals (CSV of token strings and
log-likelihoods, CIFs, extxyz) and the chains' diagnostics to ``mcmc.json``."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..crystallography import NUM_SPACE_GROUPS
from ..modeling_crystalformer import SamplingOptions
from ..modeling_crystalformer.mcmc_crystalformer import autocorrelation
from ..pretrained import load_model, space_group_distribution
from ..sampling import LOGP_KEYS, SampleWriter, crystal_batch_reward, draw_space_groups
from ..tokenization import CrystalTokens
from ..utils import atomic_write_text
from . import INTERRUPTED, naming_input
from .outputs import MCMC_OUTPUTS, check_output_dir
from .parser import CommandArguments
from .sample import SampleArguments


def _as_in_sample(name: str):
    """The field ``name`` of ``sample``'s arguments (same default and help)."""
    spec = SampleArguments.__dataclass_fields__[name]
    return field(default=spec.default, default_factory=spec.default_factory, metadata=spec.metadata)


@dataclass
class MCMCArguments(CommandArguments):
    """The options of ``crystalformer-rl mcmc``."""

    ranges = {
        "num_chains": (1, True),
        "nsweeps": (1, True),
        "mcmc_width": (0, False),
        "temperature": (0, False),
        "temperature_start": (0, False),
        "inverse_temperature_start": (0, True),
        "batch_size": (1, True),
        "reward_batch_size": (1, True),
    }

    model: str | None = _as_in_sample("model")
    space_group: list[int] | None = field(
        default=None,
        metadata={
            "help": f"Space group(s) 1..{NUM_SPACE_GROUPS} of the chains, cycled through; default: the model's "
            "training distribution. G and the Wyckoff letters of a chain never change.",
            "aliases": ["-g"],
        },
    )
    num_chains: int = field(default=100, metadata={"help": "Chains (one crystal each).", "aliases": ["-n"]})
    nsweeps: int = field(default=10, metadata={"help": "Sweeps: each proposes one move per occupied site."})
    mcmc_width: float = field(
        default=0.1, metadata={"help": "Width of the von Mises coordinate step (≈ its std in fractional units)."}
    )
    reward: str | None = field(
        default=None,
        metadata={
            "help": "Reward r: a registry name (ehull, stability, band_gap, ...; stateful rewards such as ehull_sun are refused) or package.module:callable "
            "(a TRL reward over crystals); default: none, the reference's chain on p_base."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "τ of the target p_base · exp(r / τ) (> 0)."})
    temperature_start: float | None = field(
        default=None,
        metadata={"help": "Anneal τ geometrically from this value (first sweep) to --temperature (last sweep)."},
    )
    inverse_temperature_start: float | None = field(
        default=None,
        metadata={"help": "Anneal β of the whole target β (log p_base + r / τ) linearly from this value to 1."},
    )
    elements: list[str] | None = field(
        default=None,
        metadata={
            "help": "Allowed elements, e.g. Li Fe P O: the starting crystals use only these and the element moves "
            "propose only these; default: any.",
            "aliases": ["-e"],
        },
    )
    wyckoff: list[str] | None = field(
        default=None,
        metadata={
            "help": "Wyckoff letters of the starting crystals, e.g. a c f (needs --space_group).",
            "aliases": ["-w"],
        },
    )
    score_dependent_coordinates: bool = field(
        default=False,
        metadata={
            "help": "Score coordinates tied to earlier ones (y in x,x,z) as the reference's target does; by default "
            "the target is the sampler's own density, so that without a reward `sample`'s crystals stay invariant."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the starting crystals, the moves and the space groups."})
    batch_size: int = field(default=500, metadata={"help": "Chains run together (one forward pass per step)."})
    reward_batch_size: int | None = field(
        default=None, metadata={"help": "Crystals per reward call (default: every proposal of a step at once)."}
    )
    output_dir: str = field(default="mcmc", metadata={"help": "Where the files go.", "aliases": ["-o"]})
    overwrite: bool = _as_in_sample("overwrite")
    format: list[str] = _as_in_sample("format")

    def __post_init__(self):
        super().__post_init__()  # ranges, scalars as one-item lists
        SampleArguments._check_space_groups(self)
        try:
            SamplingOptions(elements=self.elements)
        except ValueError as exc:
            raise ValueError(f"{self._option('elements')}: {str(exc).partition(': ')[2]}") from None
        if self.wyckoff:
            SampleArguments._check_wyckoff(self)

    def schedules(self) -> tuple[np.ndarray, np.ndarray]:
        """τ and β of each sweep."""
        n = self.nsweeps
        tau = np.full(n, self.temperature)
        if self.temperature_start is not None:
            tau = np.geomspace(self.temperature_start, self.temperature, n) if n > 1 else tau
        beta = np.ones(n)
        if self.inverse_temperature_start is not None:
            beta = np.linspace(self.inverse_temperature_start, 1.0, n) if n > 1 else beta
        return tau, beta


def _finite(values) -> list:
    """A list for JSON: non-finite numbers (an unscorable crystal's -inf reward) become null."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).ravel()]


class _Diagnostics:
    """The chains' diagnostics, batch after batch, for ``mcmc.json``."""

    def __init__(self):
        self.chains: list[dict] = []
        self.logp, self.reward, self.acceptance, self.systems = [], [], [], set()
        self.seconds = 0.0

    def add(self, out, first: int, seconds: float) -> None:
        self.seconds += seconds
        logp, acc = out.logp_trace.cpu().numpy(), out.acceptance.cpu().numpy()
        reward = None if out.reward_trace is None else out.reward_trace.cpu().numpy()
        self.logp.append(logp)
        self.acceptance.append(acc)
        if reward is not None:
            self.reward.append(reward)
        for i in range(len(logp)):
            elements = sorted({int(a) for a in out.A[i].tolist() if a > 0})
            self.systems.add(tuple(elements))
            chain = {"id": f"sample-{first + i:06d}", "acceptance": _finite(acc[i]), "logp_trace": _finite(logp[i])}
            if reward is not None:
                chain["reward_trace"] = _finite(reward[i])
                chain["lattice_accepted"] = out.lattice_accepted[i].tolist()
            self.chains.append(chain)

    def summary(self, args: MCMCArguments, tau, beta) -> dict:
        logp, acc = np.concatenate(self.logp), np.concatenate(self.acceptance)
        reward = np.concatenate(self.reward) if self.reward else None
        lags = min(10, args.nsweeps)
        result = {
            "settings": dataclasses.asdict(args),
            "num_chains": len(self.chains),
            "nsweeps": args.nsweeps,
            "seconds": self.seconds,
            "chain_sweeps_per_second": len(self.chains) * args.nsweeps / self.seconds if self.seconds else None,
            "temperature": _finite(tau),
            "inverse_temperature": _finite(beta),
            "acceptance_per_sweep": _finite(acc.mean(0)),
            "logp_mean": _finite(np.where(np.isfinite(logp), logp, np.nan).mean(0)),
            "logp_autocorrelation": _finite(autocorrelation(logp[:, 1:], lags)),
            "distinct_chemical_systems": len(self.systems),
            "chains": self.chains,
        }
        if reward is not None:
            finite = np.where(np.isfinite(reward), reward, np.nan)
            result["reward_mean"] = _finite(np.nanmean(finite, axis=0)) if np.isfinite(finite).any() else None
            result["reward_autocorrelation"] = _finite(autocorrelation(reward[:, 1:], lags))
        return result


def run_mcmc(args: MCMCArguments) -> dict:
    """``crystalformer-rl mcmc``: the output folder is checked first, the model (and reward) load, the chains run
    batch by batch from the model's samples and each batch's final states are written as they finish."""
    check_output_dir(args.output_dir, "--output_dir", MCMC_OUTPUTS, overwrite=args.overwrite)
    torch.manual_seed(args.seed)
    reward = None
    if args.reward:
        from ..reward_models import load_reward

        with naming_input("--reward", args.reward):
            reward = crystal_batch_reward(load_reward(args.reward))
    with naming_input("--model", args.model or "(the embedded model)"):
        model = load_model(args.model).eval()
        distribution = None if args.space_group else space_group_distribution(args.model)
    tau, beta = args.schedules()
    groups = draw_space_groups(args.num_chains, args.space_group, distribution, args.seed)
    writer = SampleWriter(Path(args.output_dir), args.format, {**dataclasses.asdict(args), "sampler": "mcmc"})
    diagnostics = _Diagnostics()
    try:
        for index, start in enumerate(range(0, len(groups), args.batch_size)):
            tic = time.perf_counter()
            out = model.mcmc(
                torch.as_tensor(groups[start : start + args.batch_size]),
                reward=reward,
                temperature=tau,
                inverse_temperature=beta,
                nsweeps=args.nsweeps,
                mcmc_width=args.mcmc_width,
                elements=args.elements,
                wyckoff=args.wyckoff,
                seed=args.seed + index,
                reward_batch_size=args.reward_batch_size,
                score_dependent_coordinates=args.score_dependent_coordinates,
            )
            seconds = time.perf_counter() - tic
            logps = {k: getattr(out, k).detach().cpu().numpy() for k in LOGP_KEYS}
            writer.add(CrystalTokens.from_sampler_output(out), logps, seconds)
            diagnostics.add(out, start, seconds)
    except KeyboardInterrupt:
        writer.finish(interrupted=True)
        print(
            f"crystalformer-rl mcmc: interrupted after {writer.num_samples} of {args.num_chains} chains; "
            f"the finished batches are kept in {args.output_dir}",
            file=sys.stderr,
        )
        raise SystemExit(INTERRUPTED) from None
    meta = writer.finish()
    summary = diagnostics.summary(args, tau, beta)
    atomic_write_text(json.dumps(summary, indent=1), Path(args.output_dir) / "mcmc.json")
    keys = ("num_chains", "seconds", "chain_sweeps_per_second", "acceptance_per_sweep", "distinct_chemical_systems")
    print(
        json.dumps(
            {
                **{k: summary[k] for k in keys},
                "files": {**meta["files"], "mcmc": str(Path(args.output_dir) / "mcmc.json")},
            },
            indent=2,
        )
    )
    return summary
