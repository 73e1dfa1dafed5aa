"""MCMC against RL on the same target p_base(x) · exp(r(x) / τ) (issue 37, item 3; docs/mcmc.md).

RL fine-tuning is the variational route to the posterior p_base · exp(r / τ); Metropolis–Hastings (``model.mcmc``)
is the sampling route. This script measures both at the same τ and reward against CPU time:

* **the target** is read from an RL config (``--rl_config``, parsed by the ``rl`` command's own parser): its
  rewards, ``reward_kwargs``, ``beta`` (τ), ``reward_clip_range``, ``failure_reward`` and prompts. The MCMC reward
  is that reward combined as ``CrystalRLOOTrainer`` combines it (weighted sum, unscorable → ``failure_reward``,
  clipped), so both arms sample the same posterior. Both arms draw the same space groups (the RL prompts'
  distribution, same seed).
* **MCMC arm**: ``--num_chains`` chains from the base model's samples, run in segments of ``--sweeps_per_segment``
  sweeps (``model.mcmc(initial=...)`` continues a chain from its state: G, W, A, XYZ and L carried over, log p and
  r recomputed, the reward's cache makes that free). After each segment the chain states are saved
  (``mcmc/state.pt``, so a rerun continues from the last segment; ``--segments`` may grow on a rerun), the
  segment's crystals are written as ``sample`` writes them (``mcmc/segment-NNN/samples.csv``) and the cumulative
  CPU seconds of this process (``time.process_time``), the acceptance and the mean reward are recorded.
* **RL arm**: an RL run folder (``--rl_run``; the script never trains, it prints the command that would). For
  chosen checkpoints: training CPU seconds to the checkpoint (the trainer's logged ``cpu_s``; for older runs the
  logged wall ``step_time`` × ``--rl_threads``)
  plus the CPU seconds of sampling ``--num_samples`` crystals from it here; the mean reward of those crystals.
* **evaluation**: ``crystalformer-rl evaluate`` (unrelaxed S.U.N., against the base model's training crystals) of
  every ``--evaluate_every``-th MCMC segment and of every RL point; its cost is charged to neither arm.
* **mixing**: acceptance per sweep, the autocorrelation of the reward along the chains after ``--burn_in`` and its
  integrated autocorrelation time, the distinct chemical systems visited (over the chain states at the segments'
  ends) and among the stable ones (stable by the evaluation).

Writes ``OUTPUT_DIR/mcmc_vs_rl.json`` and ``OUTPUT_DIR/mcmc_vs_rl.png``.

    OMP_NUM_THREADS=1 python scripts/mcmc_vs_rl.py --model MODEL --rl_config configs/rl_ehull.yaml \\
        --rl_run runs/rl-ehull --num_chains 500 --num_samples 500 --segments 30 --output_dir runs/mcmc-vs-rl
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from crystalformer_rl.modeling_crystalformer.mcmc_crystalformer import autocorrelation
from crystalformer_rl.tokenization import CrystalTokens
from crystalformer_rl.utils import atomic_write_bytes, atomic_write_text


FIELDS = ("G", "W", "A", "XYZ", "L")
#: fewer sweeps after the burn-in than this: no integrated autocorrelation time (the estimate would be noise)
MIN_SWEEPS_FOR_TAU = 10


# ------------------------------------------------------------------------------------------------------ target
@dataclasses.dataclass
class Target:
    """The posterior both arms sample: p_base · exp(r / τ), r as the RL trainer computes it."""

    config: str
    model: str | None
    rewards: list[str]
    reward_kwargs: dict
    weights: list[float]
    tau: float
    clip: tuple[float, float] | None
    failure_reward: float | None
    space_groups: list[int]  # the pool the chains' and the RL samples' space groups are drawn from

    def describe(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "space_groups"}
        out["distinct_space_groups"] = len(set(self.space_groups))
        return out


def read_target(rl_config: str, model: str | None = None) -> Target:
    """The target of an RL config, parsed as ``crystalformer-rl rl --config`` parses it (``--model`` overrides the
    config's base model)."""
    from crystalformer_rl.commands import parse_args
    from crystalformer_rl.trainers.utils import training_space_groups

    script, config = parse_args("rl", ["--config", rl_config])
    model = model if model is not None else script.model
    if model in ("default", ""):
        model = None
    kwargs = json.loads(script.reward_kwargs) if script.reward_kwargs else {}
    weights = list(config.reward_weights) if config.reward_weights else [1.0] * len(script.rewards)
    groups = list(config.space_groups) if config.space_groups else training_space_groups(script.prompts, model)
    return Target(
        config=rl_config,
        model=model,
        rewards=list(script.rewards),
        reward_kwargs=kwargs,
        weights=[float(w) for w in weights],
        tau=float(config.beta),
        clip=None if config.reward_clip_range is None else tuple(float(v) for v in config.reward_clip_range),
        failure_reward=None if config.failure_reward is None else float(config.failure_reward),
        space_groups=[int(g) for g in groups],
    )


class TrainerReward:
    """r(x) as ``CrystalRLOOTrainer._generate_and_score_completions`` computes it from its reward functions: the
    weighted sum of the rewards that scored x (NaN-sum), ``failure_reward`` where none did, clipped to
    ``reward_clip_range``. Called on a sampler batch it is ``model.mcmc``'s reward (NaN: unscorable, r = -inf);
    :meth:`score` takes ``CrystalTokens``."""

    def __init__(self, target: Target):
        from crystalformer_rl.reward_models import load_reward
        from crystalformer_rl.sampling import crystal_batch_reward

        self.target = target
        self.functions = [load_reward(n, **target.reward_kwargs.get(n, {})) for n in target.rewards]
        for f in self.functions:
            crystal_batch_reward(f)  # refuses a stateful reward (no fixed target)
        self.__name__ = "+".join(target.rewards)

    def score(self, crystals: list[CrystalTokens]) -> np.ndarray:
        prompts = [int(c.G) for c in crystals]
        columns = []
        for f in self.functions:
            values = f(prompts=prompts, completions=crystals, completion_ids=[None] * len(crystals))
            columns.append([math.nan if v is None else float(v) for v in values])
        values = np.asarray(columns, dtype=np.float64).T.reshape(len(crystals), len(self.functions))
        total = np.nansum(values * np.asarray(self.target.weights), axis=1)
        scorable = ~np.isnan(values).all(axis=1)
        failure = math.nan if self.target.failure_reward is None else self.target.failure_reward
        total = np.where(scorable, total, failure)
        if self.target.clip is not None:
            total = np.clip(total, *self.target.clip)  # NaN stays NaN
        return total

    def __call__(self, batch) -> list[float]:
        return self.score(CrystalTokens.from_sampler_output(batch)).tolist()


def draw_groups(target: Target, n: int, seed: int) -> np.ndarray:
    """n space groups drawn from the target's pool (the RL prompts' distribution)."""
    return np.random.default_rng(seed).choice(np.asarray(target.space_groups, dtype=np.int64), size=n)


# ------------------------------------------------------------------------------------------------- diagnostics
def integrated_autocorrelation_time(rho, c: float = 5.0) -> float:
    """τ_int = 1 + 2 Σ_{k=1..M} ρ_k with Sokal's automatic window: the smallest M with M >= c · τ_int(M) (all lags
    if none). 1 for uncorrelated draws, (1 + φ) / (1 - φ) for an AR(1) process; NaN without a finite ρ."""
    rho = np.asarray(rho, dtype=np.float64)
    if rho.size == 0 or not np.isfinite(rho[0]):
        return math.nan
    rho = rho[: np.argmax(~np.isfinite(rho))] if not np.isfinite(rho).all() else rho
    taus = 1 + 2 * np.cumsum(rho[1:])
    for m, tau in enumerate(taus, start=1):
        if m >= c * tau:
            return float(tau)
    return float(taus[-1]) if taus.size else 1.0


def chemical_systems(A) -> list[tuple[int, ...]]:
    """The chemical system (sorted distinct atomic numbers, padding 0 left out) of each crystal of a (B, n) array."""
    return [tuple(sorted({int(a) for a in np.asarray(row).ravel() if a > 0})) for row in A]


def distinct_systems(states, stable=None) -> int:
    """Distinct chemical systems over several (B, n) element arrays (e.g. the chain states at several times);
    with ``stable`` (one boolean array per state array, or None where unknown) only the stable crystals count."""
    seen = set()
    for i, A in enumerate(states):
        mask = None if stable is None else stable[i]
        if stable is not None and mask is None:
            continue
        for j, system in enumerate(chemical_systems(A)):
            if mask is None or bool(mask[j]):
                seen.add(system)
    return len(seen)


def _finite(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).ravel()]


def _mean(values) -> float | None:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


# ---------------------------------------------------------------------------------------------------- evaluate
def evaluate_samples(folder: Path, reference: Path | None, options: list[str]) -> dict | None:
    """``crystalformer-rl evaluate folder/samples.csv -o folder/evaluation`` (once: a summary already there is
    read back): the summary's rates and the per-crystal ``stable_unrelaxed`` flags."""
    import pandas as pd

    out = folder / "evaluation"
    if not (out / "summary.json").is_file():
        from crystalformer_rl.commands import parse_args
        from crystalformer_rl.commands.evaluate import run_evaluate

        argv = [str(folder / "samples.csv"), "-o", str(out), "--no_plots", "--no_progress", "--format", "csv"]
        argv += ["--reference", str(reference)] if reference is not None else []
        run_evaluate(*parse_args("evaluate", argv + options))
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_csv(out / "structures.csv")
    keys = ("n_total", "frac_valid", "frac_unique", "frac_novel", "frac_stable_unrelaxed", "frac_sun_unrelaxed")
    result = {k: summary.get(k) for k in keys}
    result["ehull_unrelaxed_median"] = summary.get("ehull_unrelaxed_median")
    flags = table.get("stable_unrelaxed")
    result["stable"] = None if flags is None else flags.fillna(False).astype(bool).to_numpy()
    return result


def _save_samples(folder: Path, crystals: list[CrystalTokens], logps: dict, seconds: float, settings: dict):
    from crystalformer_rl.sampling import SampleWriter

    # left by a run interrupted after writing them: redone, not appended to (nor their evaluation reused)
    (folder / "samples.csv").unlink(missing_ok=True)
    shutil.rmtree(folder / "evaluation", ignore_errors=True)
    writer = SampleWriter(folder, ["csv"], settings)
    writer.add(crystals, logps, seconds)
    writer.finish()


# ------------------------------------------------------------------------------------------------------- MCMC
def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate batches along dim 0, padding dim 1 (sites) with zeros to the longest."""
    if parts[0].dim() < 2:
        return torch.cat(parts)
    n = max(p.shape[1] for p in parts)
    pads = [(0, 0) * (p.dim() - 2) + (0, n - p.shape[1]) for p in parts]
    return torch.cat([torch.nn.functional.pad(p, pad) for p, pad in zip(parts, pads)])


def _logps(out) -> dict:
    from crystalformer_rl.sampling import LOGP_KEYS

    return {k: getattr(out, k).detach().cpu().numpy() for k in LOGP_KEYS}


def _write_state(state: dict, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def run_mcmc_arm(model, reward, target: Target, args, folder: Path) -> dict:
    """Run (or continue) the chains to ``args.segments`` segments; returns the arm's record (``state.pt``'s)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "state.pt"
    settings = {
        "model": target.model,
        "target": target.describe(),
        "num_chains": args.num_chains,
        "sweeps_per_segment": args.sweeps_per_segment,
        "mcmc_width": args.mcmc_width,
        "seed": args.seed,
    }
    if path.is_file():
        state = torch.load(path, weights_only=False)
        if state["settings"] != settings:
            changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise SystemExit(
                f"mcmc_vs_rl: {path} was made with other settings ({', '.join(changed)}); use another "
                "--output_dir or --overwrite"
            )
        print(f"mcmc: continuing from segment {len(state['segments']) - 1} ({path})")
    else:
        cpu, wall = time.process_time(), time.perf_counter()
        groups = torch.as_tensor(draw_groups(target, args.num_chains, args.seed))
        outs = [
            model.sample(groups[s : s + args.batch_size], seed=args.seed + i)
            for i, s in enumerate(range(0, len(groups), args.batch_size))
        ]
        chains = {k: _cat([getattr(o, k) for o in outs]) for k in FIELDS}
        logps = {k: np.concatenate([v[k] for v in map(_logps, outs)]) for k in _logps(outs[0])}
        seconds = time.perf_counter() - wall
        _save_samples(
            folder / "segment-000",
            CrystalTokens.from_batch(*(chains[k] for k in FIELDS)),
            logps,
            seconds,
            {"model": target.model or "default", "sampler": "mcmc", "segment": 0},
        )
        state = {
            "settings": settings,
            "chains": chains,
            "reward_trace": None,  # (chains, sweeps + 1) once a segment has run
            "acceptance": np.zeros((args.num_chains, 0)),
            "lattice_accepted": np.zeros((args.num_chains, 0)),
            "elements": [chains["A"].numpy()],
            "segments": [
                {"segment": 0, "sweeps": 0, "cpu_seconds": time.process_time() - cpu, "wall_seconds": seconds}
            ],
        }
        _write_state(state, path)

    while len(state["segments"]) <= args.segments:
        k = len(state["segments"])
        cpu, wall = time.process_time(), time.perf_counter()
        chains = state["chains"]
        outs = []
        for i, s in enumerate(range(0, args.num_chains, args.batch_size)):
            initial = {f: chains[f][s : s + args.batch_size] for f in FIELDS}
            outs.append(
                model.mcmc(
                    initial=initial,
                    reward=reward,
                    temperature=target.tau,
                    nsweeps=args.sweeps_per_segment,
                    mcmc_width=args.mcmc_width,
                    seed=args.seed + 1_000_003 * k + i,
                    reward_batch_size=args.reward_batch_size,
                )
            )
        chains = {f: _cat([getattr(o, f) for o in outs]) for f in FIELDS}
        seconds = time.perf_counter() - wall
        logps = {key: np.concatenate([v[key] for v in map(_logps, outs)]) for key in _logps(outs[0])}
        _save_samples(
            folder / f"segment-{k:03d}",
            CrystalTokens.from_batch(*(chains[f] for f in FIELDS)),
            logps,
            seconds,
            {"model": target.model or "default", "sampler": "mcmc", "segment": k},
        )
        trace = torch.cat([o.reward_trace for o in outs]).numpy()
        acceptance = torch.cat([o.acceptance for o in outs]).numpy()
        lattice = torch.cat([o.lattice_accepted for o in outs]).double().numpy()
        previous = state["segments"][-1]
        if state["reward_trace"] is None:
            state["reward_trace"] = trace
            state["segments"][0]["reward_mean"] = _mean(trace[:, 0])  # the base model's samples
        else:
            state["reward_trace"] = np.concatenate([state["reward_trace"], trace[:, 1:]], axis=1)
        state["acceptance"] = np.concatenate([state["acceptance"], acceptance], axis=1)
        state["lattice_accepted"] = np.concatenate([state["lattice_accepted"], lattice], axis=1)
        state["chains"] = chains
        state["elements"].append(chains["A"].numpy())
        state["segments"].append(
            {
                "segment": k,
                "sweeps": previous["sweeps"] + args.sweeps_per_segment,
                "cpu_seconds": previous["cpu_seconds"] + time.process_time() - cpu,
                "wall_seconds": previous["wall_seconds"] + seconds,
                "acceptance": float(acceptance.mean()),
                "lattice_acceptance": float(lattice.mean()),
                "reward_mean": _mean(trace[:, -1]),
                "distinct_systems_visited": distinct_systems(state["elements"]),
            }
        )
        _write_state(state, path)
        s = state["segments"][-1]
        print(
            f"mcmc: segment {k}/{args.segments}: {s['sweeps']} sweeps, {s['cpu_seconds']:.1f} CPU s, "
            f"acceptance {s['acceptance']:.3f}, mean reward {s['reward_mean']}"
        )
    return state


def mcmc_record(state: dict, args, reference, evaluate_options) -> dict:
    """The MCMC arm's part of the report: the segments (evaluated every ``--evaluate_every``-th and the last), the
    mixing diagnostics."""
    folder = Path(args.output_dir) / "mcmc"
    segments = [dict(s) for s in state["segments"][: args.segments + 1]]
    stable = []
    for s in segments:
        k = s["segment"]
        due = args.evaluate_every and (k % args.evaluate_every == 0 or k == len(segments) - 1)
        result = evaluate_samples(folder / f"segment-{k:03d}", reference, evaluate_options) if due else None
        flags = None if result is None else result.pop("stable")
        stable.append(flags)
        s["distinct_systems"] = len(set(chemical_systems(state["elements"][k])))
        if result is not None:
            s.update(result)
            s["distinct_stable_systems"] = None if flags is None else distinct_systems([state["elements"][k]], [flags])
    sweeps = segments[-1]["sweeps"]
    trace = state["reward_trace"]
    record = {"segments": segments, "num_chains": args.num_chains}
    if trace is not None:
        trace = trace[:, : sweeps + 1]
        burn = int(round(args.burn_in * sweeps))
        finite = np.where(np.isfinite(trace), trace, np.nan)
        rho = autocorrelation(trace[:, burn + 1 :], max_lag=min(args.max_lag, max(sweeps - burn - 1, 0)))
        record.update(
            {
                "acceptance_per_sweep": _finite(state["acceptance"][:, :sweeps].mean(0)),
                "lattice_acceptance_per_sweep": _finite(state["lattice_accepted"][:, :sweeps].mean(0)),
                "reward_mean_per_sweep": _finite(np.nanmean(finite, axis=0)),
                "burn_in_sweeps": burn,
                "reward_autocorrelation": _finite(rho),
                "reward_integrated_autocorrelation_time": (
                    integrated_autocorrelation_time(rho) if sweeps - burn >= MIN_SWEEPS_FOR_TAU else None
                ),
                "chains_with_unscorable_states": int((~np.isfinite(trace)).any(axis=1).sum()),
            }
        )
    known = [i for i, f in enumerate(stable) if f is not None]
    record["distinct_systems_visited"] = distinct_systems(state["elements"][: len(segments)])
    record["distinct_stable_systems_visited"] = (
        distinct_systems([state["elements"][i] for i in known], [stable[i] for i in known]) if known else None
    )
    last = segments[-1]
    record["cpu_seconds_per_chain_sweep"] = (
        (last["cpu_seconds"] - segments[0]["cpu_seconds"]) / (args.num_chains * sweeps) if sweeps else None
    )
    return record


# --------------------------------------------------------------------------------------------------------- RL
def rl_command(target: Target, run: str) -> str:
    model = f" --model {shlex.quote(target.model)}" if target.model else ""
    return (
        f"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 crystalformer-rl rl --config {shlex.quote(target.config)}{model} "
        f"--output_dir {shlex.quote(run)}"
    )


def training_cpu_seconds(log_history: list[dict], step: int) -> float | None:
    """CPU seconds of training up to ``step`` as the trainer logged them (``cpu_s``: its process's CPU time, all
    threads, summed over resumes; the last entry at or before ``step``); None for a run that did not log them."""
    logged = [e for e in log_history if "cpu_s" in e and e.get("step", 0) <= step]
    return float(max(logged, key=lambda e: e["step"])["cpu_s"]) if logged else None


def training_seconds(log_history: list[dict], step: int) -> float | None:
    """Wall seconds of training up to ``step``: Σ step_time × (steps since the previous entry) over the logged
    entries (TRL logs ``step_time``, the mean seconds of one optimizer step, sampling and scoring included, over each
    logging window); None without ``step_time``."""
    total, previous, seen = 0.0, 0, False
    for entry in sorted((e for e in log_history if "step_time" in e), key=lambda e: e["step"]):
        if entry["step"] > step:
            break
        total += float(entry["step_time"]) * (entry["step"] - previous)
        previous, seen = entry["step"], True
    return total if seen else None


def rl_points(run: Path, steps: list[int] | None, count: int) -> list[tuple[int, Path, list[dict]]]:
    """(step, model folder, log history) of the run's checkpoints (``checkpoint-N``) and its final model: the
    given ``steps``, else ``count`` of them spread geometrically over the run, the last included."""
    found = {}
    for folder in run.glob("checkpoint-*"):
        state = folder / "trainer_state.json"
        if folder.name.split("-")[-1].isdigit() and state.is_file():
            found[int(folder.name.split("-")[-1])] = (folder, json.loads(state.read_text())["log_history"])
    if (run / "log_history.json").is_file() and (run / "config.json").is_file():
        history = json.loads((run / "log_history.json").read_text())
        last = max((e.get("step", 0) for e in history), default=0)
        found.setdefault(last, (run, history))
    if not found:
        raise SystemExit(f"mcmc_vs_rl: --rl_run {run}: no checkpoint-N/trainer_state.json nor a finished model")
    available = sorted(found)
    if steps:
        missing = sorted(set(steps) - set(available))
        if missing:
            raise SystemExit(f"mcmc_vs_rl: --rl_steps {missing}: not in {run} (it has {available})")
        chosen = sorted(set(steps))
    else:
        wanted = np.geomspace(available[0], available[-1], min(count, len(available)))
        chosen = sorted({min(available, key=lambda s: abs(math.log(s / w))) for w in wanted} | {available[-1]})
    return [(s, *found[s]) for s in chosen]


def check_rl_run(run: Path, target: Target) -> None:
    """Refuse a run trained on another τ, clip or failure reward than the target (from its ``training_args.bin``)."""
    files = sorted(run.glob("checkpoint-*/training_args.bin")) + [run / "training_args.bin"]
    files = [f for f in files if f.is_file()]
    if not files:
        print(f"mcmc_vs_rl: {run} has no training_args.bin: τ and the reward are not checked", file=sys.stderr)
        return
    config = torch.load(files[-1], weights_only=False)
    clip = None if config.reward_clip_range is None else tuple(float(v) for v in config.reward_clip_range)
    seen = {"tau": float(config.beta), "clip": clip, "failure_reward": config.failure_reward}
    wanted = {"tau": target.tau, "clip": target.clip, "failure_reward": target.failure_reward}
    if seen != wanted:
        raise SystemExit(f"mcmc_vs_rl: --rl_run {run} was trained with {seen}, the target is {wanted}")


def run_rl_arm(target: Target, reward: TrainerReward, args, reference, evaluate_options) -> dict:
    """The RL arm: the base model (step 0) and the chosen checkpoints, each sampled (``--num_samples``, the same
    space groups as the chains), scored and evaluated; CPU seconds = training (logged) + sampling (measured)."""
    from crystalformer_rl.pretrained import load_model
    from crystalformer_rl.sampling import sample_crystals

    run = Path(args.rl_run)
    check_rl_run(run, target)
    points = [(0, target.model, [])] + rl_points(run, args.rl_steps, args.rl_points)
    groups = draw_groups(target, args.num_samples, args.seed)
    records = []
    for step, model_path, history in points:
        folder = Path(args.output_dir) / "rl" / f"step-{step:06d}"
        done = folder / "arm.json"
        drawn_with = {  # what the samples and their evaluation depend on
            "model": str(model_path or "default"),
            "num_samples": args.num_samples,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "evaluate_options": list(evaluate_options),
            "reference": None if reference is None else str(reference),
        }
        if done.is_file():
            point = json.loads(done.read_text())
            if point.get("drawn_with") != drawn_with:
                raise SystemExit(
                    f"mcmc_vs_rl: {folder} holds samples drawn with {point.get('drawn_with')}, not {drawn_with}; "
                    "rerun with --overwrite or another --output_dir"
                )
        else:
            model = load_model(model_path).eval()
            cpu = time.process_time()
            crystals, logps, seconds = sample_crystals(
                model, groups, batch_size=args.batch_size, progress=False, seed=args.seed
            )
            sampling_cpu = time.process_time() - cpu
            _save_samples(
                folder,
                crystals,
                logps,
                seconds,
                {"model": str(model_path or "default"), "sampler": "rl", "step": step},
            )
            wall = training_seconds(history, step) if step else 0.0
            cpu_logged = training_cpu_seconds(history, step) if step else 0.0
            logged = [e["reward"] for e in history if "reward" in e and e["step"] <= step]
            point = {
                "drawn_with": drawn_with,
                "step": step,
                "model": str(model_path or "default"),
                "training_wall_seconds": wall,
                "training_cpu_seconds": (
                    cpu_logged if cpu_logged is not None else None if wall is None else wall * args.rl_threads
                ),
                "training_cpu_measured": cpu_logged is not None,
                "sampling_cpu_seconds": sampling_cpu,
                "reward_mean": _mean(reward.score(crystals)),
                "training_reward_logged": logged[-1] if logged else None,
                "systems": [list(system) for system in chemical_systems([c.A for c in crystals])],
            }
            atomic_write_text(json.dumps(point, indent=1), done)
        if point["training_cpu_seconds"] is not None:
            point["cpu_seconds"] = point["training_cpu_seconds"] + point["sampling_cpu_seconds"]
        systems = [tuple(system) for system in point.pop("systems")]
        point["distinct_systems"] = len(set(systems))
        if args.evaluate_every:
            result = evaluate_samples(folder, reference, evaluate_options)
            flags = result.pop("stable")
            point.update(result)
            if flags is not None:
                point["distinct_stable_systems"] = len({x for x, ok in zip(systems, flags) if ok})
        records.append(point)
        print(
            f"rl: step {step}: {point.get('cpu_seconds')} CPU s, mean reward {point['reward_mean']}, "
            f"S.U.N. {point.get('frac_sun_unrelaxed')}"
        )
    return {"run": str(run), "threads": args.rl_threads, "command": rl_command(target, str(run)), "points": records}


# ------------------------------------------------------------------------------------------------------ figure
def plot(report: dict, path: Path) -> Path:
    """S.U.N. rate and mean reward against CPU minutes (both arms), and the chains' reward autocorrelation."""
    from crystalformer_rl.plotting import figure, save_figure

    fig, (sun_ax, reward_ax, acf_ax) = figure((15, 4.2), ncols=3)
    mcmc, rl = report["mcmc"], report.get("rl")
    arms = [("MCMC", "C0", "o-", list(mcmc["segments"]), lambda r: f"{r['sweeps']} sweeps")]
    if rl:
        arms.append(
            (
                "RL",
                "C3",
                "s--",
                [p for p in rl["points"] if p.get("cpu_seconds") is not None],
                lambda r: f"step {r['step']}",
            )
        )
    for name, color, style, rows, label in arms:
        for ax, key, scale in ((sun_ax, "frac_sun_unrelaxed", 100), (reward_ax, "reward_mean", 1)):
            rows_with = [r for r in rows if r.get(key) is not None]
            if not rows_with:
                continue
            x = [r["cpu_seconds"] / 60 for r in rows_with]
            y = np.array([r[key] * scale for r in rows_with])
            if key == "frac_sun_unrelaxed":  # binomial standard error of a rate over n crystals
                n = np.array([r.get("n_total") or 1 for r in rows_with])
                err = 100 * np.sqrt(y / 100 * (1 - y / 100) / n)
                ax.fill_between(x, y - err, y + err, color=color, alpha=0.15, lw=0)
            ax.plot(x, y, style, color=color, label=name, ms=4)
            if name == "MCMC":  # both arms start from the base model's samples (same groups, same seed)
                ax.annotate("base", (x[0], y[0]), textcoords="offset points", xytext=(-6, 6), fontsize=7, color="grey")
            ax.annotate(
                label(rows_with[-1]),
                (x[-1], y[-1]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color=color,
            )
    tau = report["target"]["tau"]
    for ax, ylabel in ((sun_ax, "S.U.N. rate, unrelaxed (%)"), (reward_ax, "mean reward r")):
        ax.set_xlabel("CPU minutes (RL: training + sampling; MCMC: chains)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.set_xscale("log")
            ax.legend(fontsize=8)
    sun_ax.set_ylim(bottom=0)
    sun_ax.set_title(f"S.U.N. against CPU time, τ = {tau:g}, {mcmc['num_chains']} crystals each", fontsize=9)
    reward_ax.set_title(f"target p_base · exp(r / τ), r = {'+'.join(report['target']['rewards'])}", fontsize=9)
    rho = [r for r in mcmc.get("reward_autocorrelation") or [] if r is not None]
    if rho:
        acf_ax.plot(range(len(rho)), rho, "o-", color="C0", ms=3, label="reward")
        acf_ax.axhline(0, color="grey", lw=0.8)
        tau_int = mcmc["reward_integrated_autocorrelation_time"]
        tau_text = "too few sweeps" if tau_int is None else f"{tau_int:.1f} sweeps"
        acc = np.mean([a for a in mcmc["acceptance_per_sweep"] if a is not None])
        acf_ax.set_title(
            f"MCMC mixing: τ_int = {tau_text}, acceptance {acc:.2f},\n"
            f"{mcmc['distinct_systems_visited']} chemical systems visited "
            f"({mcmc['distinct_stable_systems_visited']} stable)",
            fontsize=9,
        )
    else:
        acf_ax.set_title("MCMC mixing: too few sweeps after burn-in for an autocorrelation", fontsize=9)
    acf_ax.set_xlabel(f"lag (sweeps), after {mcmc.get('burn_in_sweeps', 0)} burn-in sweeps")
    acf_ax.set_ylabel("autocorrelation of r along chains")
    acf_ax.grid(alpha=0.3)
    return save_figure(fig, path)


# -------------------------------------------------------------------------------------------------------- main
def parse_arguments(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--rl_config",
        default="configs/rl_ehull.yaml",
        help="RL config that defines the target (reward, τ = beta, clip, failure reward, prompts).",
    )
    p.add_argument("--model", default=None, help="Base model p_base (default: the RL config's).")
    p.add_argument("--rl_run", default=None, help="RL run folder (checkpoint-N/); none: the MCMC arm only.")
    p.add_argument("--rl_steps", type=int, nargs="*", default=None, help="Checkpoint steps to use (default: spread).")
    p.add_argument("--rl_points", type=int, default=6, help="Checkpoints to use when --rl_steps is not given.")
    p.add_argument(
        "--rl_threads",
        type=float,
        default=1.0,
        help="Threads of an RL run that did not log cpu_s: its training CPU seconds = logged wall seconds × this.",
    )
    p.add_argument("--num_chains", type=int, default=500, help="MCMC chains (one crystal each).")
    p.add_argument("--num_samples", type=int, default=None, help="Crystals per RL point (default: --num_chains).")
    p.add_argument("--segments", type=int, default=20, help="MCMC segments (a rerun continues, and may extend).")
    p.add_argument("--sweeps_per_segment", type=int, default=1, help="Sweeps between two saved states.")
    p.add_argument("--mcmc_width", type=float, default=0.1, help="Von Mises coordinate step (fractional units).")
    p.add_argument("--reward_batch_size", type=int, default=None, help="Crystals per reward call (MCMC).")
    p.add_argument("--batch_size", type=int, default=500, help="Chains run together; crystals sampled together.")
    p.add_argument(
        "--evaluate_every",
        type=int,
        default=1,
        help="Evaluate every k-th MCMC segment (and the first and last); 0: evaluate nothing.",
    )
    p.add_argument(
        "--evaluate_options",
        default="",
        help="More options of `crystalformer-rl evaluate`, e.g. '--calculator chgnet-r2scan'.",
    )
    p.add_argument("--burn_in", type=float, default=0.5, help="Share of the sweeps left out of the autocorrelation.")
    p.add_argument("--max_lag", type=int, default=20, help="Largest lag of the autocorrelation (sweeps).")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="runs/mcmc-vs-rl")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="Start anew: removes the chains, their evaluations and the RL arm's samples (mcmc/, rl/).",
    )
    args = p.parse_args(argv)
    args.num_samples = args.num_samples or args.num_chains
    for name in ("num_chains", "segments", "sweeps_per_segment", "batch_size", "num_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: use at least 1")
    if not 0 <= args.burn_in < 1:
        p.error(f"--burn_in {args.burn_in}: use a share in [0, 1)")
    return args


def main(argv=None, model=None) -> dict:
    """Run the experiment; ``model`` (a loaded base model) replaces loading ``--model`` (tests)."""
    from crystalformer_rl.pretrained import load_model, model_reference

    args = parse_arguments(argv)
    if args.rl_run and not Path(args.rl_run).is_dir():  # before the chains run, not after
        raise SystemExit(f"mcmc_vs_rl: --rl_run {args.rl_run}: not a folder (an `rl` run's output_dir)")
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    target = read_target(args.rl_config, args.model)
    reward = TrainerReward(target)
    if args.overwrite:  # the chains, their segments' evaluations and the RL arm's samples all go
        for arm in ("mcmc", "rl"):
            shutil.rmtree(out / arm, ignore_errors=True)
    base = model if model is not None else load_model(target.model).eval()
    reference = model_reference(target.model)
    options = shlex.split(args.evaluate_options)

    state = run_mcmc_arm(base, reward, target, args, out / "mcmc")
    report = {
        "target": target.describe(),
        "settings": dict(vars(args)),
        "novelty_reference": None if reference is None else str(reference),
        "mcmc": mcmc_record(state, args, reference, options),
    }
    if args.rl_run:
        report["rl"] = run_rl_arm(target, reward, args, reference, options)
    else:
        run = args.rl_run or "runs/rl-for-mcmc-vs-rl"
        report["rl_command"] = rl_command(target, run)
        print(f"no RL run given (--rl_run): train one with\n  {report['rl_command']}\nand rerun with --rl_run {run}")
    atomic_write_text(json.dumps(report, indent=1), out / "mcmc_vs_rl.json")
    plot(report, out / "mcmc_vs_rl.png")
    print(f"wrote {out / 'mcmc_vs_rl.json'} and {out / 'mcmc_vs_rl.png'}")
    return report


if __name__ == "__main__":
    main()
