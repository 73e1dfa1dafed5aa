"""Issue 37, item 2: the paper's Fig. 5 on one base model: base → SFT → DPO → RL (the S.U.N.-aware recipe) and RL
with the paper's stability-only reward; orchestration, compute record and report.

    python scripts/fig5.py --work runs/fig5 --model runs/dm34/new-default --dry-run   # the commands, nothing run
    python scripts/fig5.py --work runs/fig5 --model runs/dm34/new-default              # every stage, then the report
    python scripts/fig5.py --work runs/fig5 --model runs/dm34/new-default --stages report

Stages (each skipped when its output exists; an interrupted one resumes: `evaluate --relax --resume`, the
trainers' checkpoints; an output the commands did not finish is refused by them, never overwritten):

* ``base``: N crystals from the base model (``--sample_seed``): the SFT data's source;
* ``sft-data``: those crystals relaxed (`evaluate --relax --resume`, optionally ``--relax_screen``), and the ones
  stable after relaxation (E_hull <= 0.1 eV/atom) written to ``sft-data/sft_data.csv`` as relaxed CIFs: the
  paper's SFT data (its own samples that are stable after relaxation);
* ``sft``: `crystalformer-rl sft --data sft-data/sft_data.csv` fine-tuned on that table (the paper's 55 epochs,
  batch 100, lr 1e-5) instead of sampling and relaxing by itself, all at once and without resume;
* ``dpo``: `crystalformer-rl dpo --config configs/dpo_ehull.yaml`;
* ``rl-sun`` / ``rl-stability``: `crystalformer-rl rl` with ``configs/rl_ehull_sun_near_hull_rloo.yaml`` (the
  recipe) / ``configs/rl_ehull_near_hull_rloo.yaml`` (stability-only); ``--max_steps`` overrides the configs';
* ``eval``: per model, N fresh crystals (``--eval_seed``, unseen by every training stage), evaluated as sampled,
  and the first ``--relax_n`` of them (``--relax_n_other`` for SFT, DPO, stability-only RL) relaxed with
  `evaluate --relax --limit n --resume`. The samples are i.i.d. (space groups drawn from the prior, every crystal
  sampled on its own), so the first n are a random subset;
* ``report``: ``fig5.json``, ``fig5.md`` and ``fig5.png`` in the work folder (:func:`report`).

CPU time per stage (wall time × threads, and the children's CPU seconds from ``getrusage(RUSAGE_CHILDREN)``, summed
over resumed runs) goes to ``compute.json``; a method's cost is that of its stages (SFT: ``base`` + ``sft-data`` +
``sft``, the relaxations included). All commands run with ``OMP_NUM_THREADS=--threads``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd


SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))  # rl_demo_report, beside this script

from rl_demo_report import facts  # noqa: E402


CONFIGS = SCRIPTS.parent / "configs"
CLI = "crystalformer-rl"
# key: (label, run folder in the work folder (None: the base model), the stages a method's cost sums)
MODELS = {
    "base": ("base", None, ()),
    "sft": ("SFT", "sft", ("base", "sft-data", "sft")),
    "dpo": ("DPO", "dpo", ("dpo",)),
    "rl-sun": ("RL S.U.N.-aware (recipe)", "rl-sun", ("rl-sun",)),
    "rl-stability": ("RL stability-only", "rl-stability", ("rl-stability",)),
}
BIG_RELAX = ("base", "rl-sun")  # issue 37: >= 1,000 relaxed crystals for the base and the recipe, >= 500 others
RL_CONFIGS = {"rl-sun": "rl_ehull_sun_near_hull_rloo.yaml", "rl-stability": "rl_ehull_near_hull_rloo.yaml"}
SFT_PAPER = ["--learning_rate", "1e-5", "--per_device_train_batch_size", "100", "--num_train_epochs", "55"]
LABEL_BOX = {"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8}  # readable over lines
STAGES = ("base", "sft-data", "sft", "dpo", "rl-sun", "rl-stability", *(f"eval-{k}" for k in MODELS), "report")


# ------------------------------------------------------------------------------------------------ the stages
def model_dir(args, key: str) -> str | None:
    """The folder of model ``key`` (``None``: the embedded default model as base)."""
    run = MODELS[key][1]
    return str(args.work / run) if run else args.model


def with_model(model: str | None) -> list[str]:
    return ["--model", model] if model else []


def sample_command(args, model: str | None, seed: int, out: Path) -> list[str]:
    n = ["-n", str(args.num_samples), "--seed", str(seed), "-o", str(out), "--format", "csv"]
    return [CLI, "sample", *with_model(model), *n]


def relax_command(args, samples: Path, out: Path, limit: int | None = None) -> list[str]:
    """`evaluate --relax --resume`: a fresh folder starts, an interrupted one continues from its relaxed/ chunks."""
    screen = ["--relax_screen", str(args.relax_screen)] if args.relax_screen is not None else []
    limit_args = ["--limit", str(limit)] if limit else []
    return [CLI, "evaluate", str(samples), "--relax", "--resume", *limit_args, *screen, "-o", str(out)]


def sun_reward_kwargs(config: Path, model: str | None) -> list[str]:
    """The recipe's S.U.N. penalty judges novelty against ``reference: default``, the embedded model's corpus; a
    base model folder with its own training crystals gets those instead (what `evaluate` judges novelty by)."""
    import yaml

    from crystalformer_rl.pretrained import SHIPPED_REFERENCE, model_reference

    own = model_reference(model) if model else None
    if own is None or own == SHIPPED_REFERENCE:
        return []
    kwargs = json.loads(yaml.safe_load(config.read_text())["reward_kwargs"])
    kwargs["ehull_sun"]["reference"] = str(own)
    return ["--reward_kwargs", json.dumps(kwargs)]


def plan(args) -> dict[str, list[tuple[list[str] | None, Path, str]]]:
    """Every stage's steps: (command, or None for a step done here; the output that marks it done; what it is)."""
    w = args.work
    samples = w / "base" / "samples"
    steps: dict[str, list] = {
        "base": [(sample_command(args, args.model, args.sample_seed, samples), samples / "samples.csv.meta.json", "")],
        "sft-data": [
            (
                relax_command(args, samples / "samples.csv", w / "sft-data" / "eval"),
                w / "sft-data/eval/summary.json",
                "",
            ),
            (None, w / "sft-data" / "sft_data.csv", "the crystals stable after relaxation, as relaxed CIFs"),
        ],
    }
    sft_run = w / "sft"
    sft = [*with_model(args.model), "--output_dir", str(sft_run), *SFT_PAPER, *shlex.split(args.sft_args)]
    if list(sft_run.glob("checkpoint-*")):
        sft += ["--resume_from_checkpoint", "last"]
    data = w / "sft-data" / "sft_data.csv"
    train = [CLI, "sft", "--data", str(data), *sft]
    steps["sft"] = [(train, sft_run / "log_history.json", "")]
    dpo = ["--config", str(CONFIGS / "dpo_ehull.yaml"), *with_model(args.model), "--output_dir", str(w / "dpo")]
    steps["dpo"] = [([CLI, "dpo", *dpo, "--resume", *shlex.split(args.dpo_args)], w / "dpo" / "log_history.json", "")]
    for key, config in RL_CONFIGS.items():
        rl = ["--config", str(CONFIGS / config), *with_model(args.model), "--output_dir", str(w / key), "--resume"]
        rl += ["--max_steps", str(args.max_steps)] if args.max_steps else []
        rl += sun_reward_kwargs(CONFIGS / config, args.model) if key == "rl-sun" else []
        steps[key] = [([CLI, "rl", *rl, *shlex.split(args.rl_args)], w / key / "log_history.json", "")]
    for key in MODELS:
        out = w / "eval" / key
        n = args.relax_n if key in BIG_RELAX else args.relax_n_other
        fresh = out / "samples" / "samples.csv"
        steps[f"eval-{key}"] = [
            (
                sample_command(args, model_dir(args, key), args.eval_seed, out / "samples"),
                fresh.with_suffix(".csv.meta.json"),
                "",
            ),
            ([CLI, "evaluate", str(fresh), "-o", str(out / "unrelaxed")], out / "unrelaxed" / "summary.json", ""),
            (relax_command(args, fresh, out / "relaxed", limit=n), out / "relaxed" / "summary.json", ""),
        ]
    return steps


def write_sft_data(eval_dir: Path, path: Path) -> pd.DataFrame:
    """The relaxed crystals of an `evaluate --relax` folder that are stable after relaxation, as ``name``, ``cif``
    (relaxed) and ``e_hull`` (relaxed): what `sft` keeps (a failed relaxation is never kept)."""
    from crystalformer_rl.utils import atomic_write_table

    table = pd.read_csv(eval_dir / "structures.csv")
    kept = table[table["stable_relaxed"].fillna(False).astype(bool) & table["relaxed_cif"].notna()]
    rows = pd.DataFrame({"name": kept["name"], "cif": kept["relaxed_cif"], "e_hull": kept["e_hull_relaxed"]})
    atomic_write_table(rows, path)
    return rows


# ------------------------------------------------------------------------------------------------- compute
@contextmanager
def recorded(path: Path, stage: str, threads: int, commands: list[str]):
    """Add this run of ``stage`` (wall time, wall × threads, the children's CPU seconds) to ``compute.json``, also
    when it fails (the time was spent)."""
    from crystalformer_rl.utils import atomic_write_text

    start, before, finished = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN), False
    try:
        yield
        finished = True
    finally:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter() - start
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        record = json.loads(path.read_text()) if path.is_file() else {"stages": {}}
        entry = record["stages"].setdefault(stage, {"runs": []})
        entry["runs"].append(
            {
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "wall_s": round(wall, 1),
                "threads": threads,
                "cpu_s": round(cpu, 1),
                "finished": finished,
                "commands": commands,
            }
        )
        entry["wall_minutes"] = round(sum(r["wall_s"] for r in entry["runs"]) / 60, 2)
        entry["wall_x_threads_minutes"] = round(sum(r["wall_s"] * r["threads"] for r in entry["runs"]) / 60, 2)
        entry["cpu_minutes"] = round(sum(r["cpu_s"] for r in entry["runs"]) / 60, 2)
        atomic_write_text(json.dumps(record, indent=1) + "\n", path)


def run_stage(args, stage: str, steps) -> None:
    todo = [(command, done, what) for command, done, what in steps if not done.exists()]
    if not todo:
        print(f"# {stage}: done ({steps[-1][1]} exists)")
        return
    shown = [shlex.join(c) if c else f"(here) {what} -> {done}" for c, done, what in todo]
    print(f"# {stage}\n" + "\n".join(shown), flush=True)
    if args.dry_run:
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with recorded(args.work / "compute.json", stage, args.threads, shown):
        for command, done, _ in todo:
            if command is None:
                write_sft_data(args.work / "sft-data" / "eval", done)
            else:
                subprocess.run(command, env=env, check=True)


# ------------------------------------------------------------------------------------------------- report
def stderr(p: float | None, n: int) -> float | None:
    """The binomial standard error sqrt(p(1 - p) / n)."""
    return None if p is None or not n else math.sqrt(p * (1 - p) / n)


def weighted_rate(table: pd.DataFrame, column: str, prior: dict[int, float] | None) -> dict:
    """The rate of ``column`` averaged over space groups (the sampler's ``G``), each weighted by its frequency in
    the training distribution ``prior`` (Fig. 5's average), over the groups present; ``covered`` is their share of
    the prior. Standard error sqrt(Σ w_g² p_g (1 - p_g) / n_g) with the weights normalised."""
    if not prior:
        return {"rate": None, "stderr": None, "covered": None}
    flags = table[column].fillna(False).astype(bool)
    groups = pd.DataFrame({"g": pd.to_numeric(table["G"], errors="coerce"), "x": flags}).dropna()
    per = groups.groupby("g")["x"].agg(["mean", "size"])
    weights = np.array([prior.get(int(g), 0.0) for g in per.index], dtype=float)
    if weights.sum() == 0:
        return {"rate": None, "stderr": None, "covered": 0.0}
    covered = weights.sum() / sum(prior.values())
    weights = weights / weights.sum()
    p, n = per["mean"].to_numpy(), per["size"].to_numpy()
    return {
        "rate": float(weights @ p),
        "stderr": float(math.sqrt(np.sum(weights**2 * p * (1 - p) / n))),
        "covered": float(covered),
    }


def token_logp(samples_csv: Path, model: str | None, batch_size: int = 500) -> np.ndarray:
    """ln p_model(x) of every crystal of a samples table, computed on its written tokens (NaN where they do not
    parse); the sampler's own ``logp`` column up to the tokens' 6 decimals."""
    import torch

    from crystalformer_rl.pretrained import load_model
    from crystalformer_rl.tokenization import CrystalTokenizationError, CrystalTokens

    policy = load_model(model).eval()
    texts = pd.read_csv(samples_csv)["tokens"].tolist()
    tokens = {}
    for i, text in enumerate(texts):
        try:
            tokens[i] = CrystalTokens.from_string(text, n_max=policy.config.n_max)
        except (CrystalTokenizationError, AttributeError):  # an unparsable or missing (NaN) token string
            continue
    out = np.full(len(texts), np.nan)
    rows = list(tokens)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = [tokens[i] for i in rows[start : start + batch_size]]
            G = torch.tensor([t.G for t in batch])
            W, A = (torch.tensor(np.stack([getattr(t, f) for t in batch])) for f in ("W", "A"))
            XYZ, L = (
                torch.tensor(np.stack([getattr(t, f) for t in batch]), dtype=torch.float32) for f in ("XYZ", "L")
            )
            out[rows[start : start + batch_size]] = policy.log_prob(G, L, XYZ, A, W, output_logits=False).logp.numpy()
    return out


def sample_kl(samples_csv: Path, model: str | None, base: str | None) -> dict:
    """KL(p_model ‖ p_base) per crystal on the model's own fresh samples: the mean of ln p_model(x) − ln p_base(x)
    (the estimator of RL's logged ``kl``, here the same for every model, SFT included), its standard error and n."""
    d = token_logp(samples_csv, model) - token_logp(samples_csv, base)
    d = d[np.isfinite(d)]
    return {
        "kl": float(d.mean()) if d.size else None,
        "stderr": float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None,
        "n": int(d.size),
    }


def model_row(work: Path, key: str, model: str | None, base: str | None, prior, compute: dict) -> dict | None:
    from crystalformer_rl.utils import atomic_write_text

    label, run, cost_stages = MODELS[key]
    out = work / "eval" / key
    if not (out / "unrelaxed" / "summary.json").is_file():
        return None
    row = {"key": key, "label": label, "model": model}
    row.update(facts([out / "unrelaxed"], work / run if run else None))  # n, unique, novel, S.U.N., logged KL
    row.setdefault("kl_last5_mean", None)  # the base model has no run; SFT logs no KL
    table = pd.read_csv(out / "unrelaxed" / "structures.csv")
    row["sun_unrelaxed_stderr"] = stderr(row["sun_unrelaxed"], row["n"])
    row["sun_unrelaxed_weighted"] = weighted_rate(table, "sun_unrelaxed", prior)
    if (out / "relaxed" / "summary.json").is_file():
        summary = json.loads((out / "relaxed" / "summary.json").read_text())
        n = summary["n_total"]
        row.update(
            n_relaxed=n,
            sun_relaxed=summary["frac_sun_relaxed"],
            sun_relaxed_stderr=stderr(summary["frac_sun_relaxed"], n),
            stable_relaxed=summary["frac_stable_relaxed"],
            n_relax_screened=summary.get("n_relax_screened"),
            sun_relaxed_weighted=weighted_rate(pd.read_csv(out / "relaxed" / "structures.csv"), "sun_relaxed", prior),
        )
    else:  # facts() read the unrelaxed summary, which has no relaxed rate
        row.update(n_relaxed=None, sun_relaxed=None, sun_relaxed_stderr=None, sun_relaxed_weighted=None)
    cached = out / "kl.json"
    if key == "base":
        row["kl_samples"] = {"kl": 0.0, "stderr": 0.0, "n": row["n"]}
    elif cached.is_file():
        row["kl_samples"] = json.loads(cached.read_text())
    elif (out / "samples" / "samples.csv").is_file():
        row["kl_samples"] = sample_kl(out / "samples" / "samples.csv", model, base)
        atomic_write_text(json.dumps(row["kl_samples"], indent=1), cached)
    stages = compute.get("stages", {})
    row["cpu_minutes_method"] = sum(stages.get(s, {}).get("cpu_minutes", 0.0) for s in cost_stages)
    row["wall_x_threads_minutes_method"] = sum(
        stages.get(s, {}).get("wall_x_threads_minutes", 0.0) for s in cost_stages
    )
    row["cpu_minutes_method_complete"] = all(  # every stage the method needs ran to its end at least once
        any(r.get("finished") for r in stages.get(s, {}).get("runs", [])) for s in cost_stages
    )
    row["cpu_minutes_evaluation"] = stages.get(f"eval-{key}", {}).get("cpu_minutes")
    return row


def pct(p, se=None) -> str:
    if p is None:
        return "–"
    return f"{100 * p:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "") + " %"


def markdown(rows: list[dict]) -> str:
    head = [
        "model",
        "S.U.N. unrelaxed (n)",
        "S.U.N. relaxed ± SE (n)",
        "Δ relaxed vs base",
        "S.U.N. relaxed, space-group weighted",
        "S.U.N. unrelaxed, space-group weighted",
        "KL to base (fresh samples)",
        "KL logged in training",
        "unique",
        "novel",
        "CPU min (method)",
        "CPU min (evaluation)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        kl = r.get("kl_samples") or {}
        weighted = [r.get(k) or {} for k in ("sun_relaxed_weighted", "sun_unrelaxed_weighted")]
        cpu = f"{r['cpu_minutes_method']:.1f}" + ("" if r["cpu_minutes_method_complete"] else " (partial)")
        cells = [
            r["label"],
            f"{pct(r['sun_unrelaxed'])} ({r['n']:,})",
            f"{pct(r['sun_relaxed'], r['sun_relaxed_stderr'])} ({r['n_relaxed']:,})" if r["n_relaxed"] else "–",
            pct(r.get("delta_relaxed"), r.get("delta_relaxed_stderr")).replace(" %", " pts")
            if r["key"] != "base"
            else "",
            *(pct(w.get("rate"), w.get("stderr")) for w in weighted),
            f"{kl['kl']:.3g} ± {kl['stderr']:.2g}" if kl.get("kl") is not None else "–",
            f"{r['kl_last5_mean']:.3g}" if r.get("kl_last5_mean") is not None else "–",
            pct(r["unique"]),
            pct(r["novel"]),
            cpu if r["key"] != "base" else "– (pretraining)",
            f"{r['cpu_minutes_evaluation']:.1f}" if r.get("cpu_minutes_evaluation") is not None else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    """Fig. 5's form: S.U.N. per model, as sampled (all fresh samples) and after relaxation (the relaxed subset) side
    by side, with standard errors; diamonds mark the space-group weighted rates, a dashed line the base model's
    relaxed rate, and each model's KL to the base and method cost are under its name."""
    from crystalformer_rl.plotting import figure, save_figure

    fig, ax = figure((1.9 * len(rows) + 1.6, 4.4))
    x = np.arange(len(rows))
    weighted_label = "space-group weighted (training prior)"
    for offset, rule, color in ((-0.2, "unrelaxed", "#9ecae1"), (0.2, "relaxed", "#08519c")):
        values = np.array([np.nan if r[f"sun_{rule}"] is None else 100 * r[f"sun_{rule}"] for r in rows])
        errors = np.array([100 * (r[f"sun_{rule}_stderr"] or 0) for r in rows])
        sizes = "/".join(
            f"{s:,}" for s in sorted({r["n" if rule == "unrelaxed" else "n_relaxed"] for r in rows} - {None})
        )
        label = f"{'as sampled' if rule == 'unrelaxed' else 'after CHGNet relaxation'} (n = {sizes})"
        ax.bar(x + offset, values, 0.4, yerr=errors, capsize=3, color=color, label=label)
        for xi, v, e in zip(x + offset, values, errors):  # the value above its error bar
            if np.isfinite(v):
                ax.text(xi, v + e + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=7, bbox=LABEL_BOX)
        weighted = [
            100 * w["rate"] if (w := r.get(f"sun_{rule}_weighted") or {}).get("rate") is not None else np.nan
            for r in rows
        ]
        ax.scatter(x + offset, weighted, marker="D", s=14, color="black", zorder=3, label=weighted_label)
        weighted_label = None  # one legend entry
    base = next((r for r in rows if r["key"] == "base" and r["sun_relaxed"] is not None), None)
    if base is not None:
        ax.axhline(100 * base["sun_relaxed"], color="grey", lw=0.8, ls="--", label="base, relaxed", zorder=0)
    ticks = []
    for r in rows:
        kl = (r.get("kl_samples") or {}).get("kl")
        cost = f"{r['cpu_minutes_method']:.0f} CPU-min" if r["key"] != "base" else "pretrained"
        ticks.append(f"{r['label']}\nKL {kl:.2g} · {cost}" if kl is not None else f"{r['label']}\n{cost}")
    ax.set_xticks(x, ticks, fontsize=7)
    ax.set_ylabel("S.U.N. rate (%, ± standard error)")
    ax.set_title("Stable, unique and novel crystals per model (paper Fig. 5)", fontsize=10)
    tops = [100 * ((r[f"sun_{k}"] or 0) + (r[f"sun_{k}_stderr"] or 0)) for r in rows for k in ("unrelaxed", "relaxed")]
    ax.set_ylim(0, max(tops + [1.0]) * 1.4)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def report(work: Path, base_model: str | None, output: Path | None = None) -> list[dict]:
    """The table (``fig5.json`` / ``.md``) and the figure (``fig5.png``) of every model evaluated so far."""
    from crystalformer_rl.pretrained import space_group_distribution
    from crystalformer_rl.utils import atomic_write_text

    output = output or work / "fig5"
    prior = space_group_distribution(base_model)
    compute = json.loads((work / "compute.json").read_text()) if (work / "compute.json").is_file() else {}
    rows = []
    for key, (_, run, _) in MODELS.items():
        row = model_row(work, key, str(work / run) if run else base_model, base_model, prior, compute)
        if row is None:
            print(f"# report: {key} not evaluated yet ({work / 'eval' / key / 'unrelaxed'})")
        else:
            rows.append(row)
    base = next((r for r in rows if r["key"] == "base"), None)
    for r in rows:  # the gain over the base, with the standard error of the difference
        if base is not None and r["sun_relaxed"] is not None and base["sun_relaxed"] is not None:
            r["delta_relaxed"] = r["sun_relaxed"] - base["sun_relaxed"]
            r["delta_relaxed_stderr"] = math.hypot(r["sun_relaxed_stderr"], base["sun_relaxed_stderr"])
    if not rows:
        return rows
    record = {
        "work": str(work),
        "base_model": base_model,
        "prior": "space_group_distribution of the base model",
        "models": rows,
    }
    atomic_write_text(json.dumps(record, indent=1, default=str) + "\n", output.with_suffix(".json"))
    table = markdown(rows)
    atomic_write_text(table, output.with_suffix(".md"))
    plot(rows, output.with_suffix(".png"))
    print(table)
    return rows


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the work folder (every stage's output)")
    parser.add_argument("--model", help="the base model folder (default: the embedded model)")
    parser.add_argument("--num_samples", type=int, default=2000, help="crystals per sample (SFT source, each eval)")
    parser.add_argument("--sample_seed", type=int, default=0, help="seed of the SFT source sample")
    parser.add_argument(
        "--eval_seed", type=int, default=1000, help="seed of the fresh samples (sample's batches use seed + i)"
    )
    parser.add_argument("--relax_n", type=int, default=1000, help="relaxed crystals for the base and the recipe")
    parser.add_argument("--relax_n_other", type=int, default=500, help="relaxed crystals for the other models")
    parser.add_argument("--relax_screen", type=float, help="evaluate --relax_screen EHULL (default: relax all)")
    parser.add_argument("--max_steps", type=int, help="RL steps (default: the configs' 1,200)")
    parser.add_argument("--sft_args", default="", help="more options for sft, e.g. '--num_train_epochs 30'")
    parser.add_argument("--dpo_args", default="", help="more options for dpo, e.g. '--learning_rate 3e-4'")
    parser.add_argument("--rl_args", default="", help="more options for both RL runs")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    parser.add_argument("--stages", nargs="+", choices=(*STAGES, "eval"), default=list(STAGES))
    parser.add_argument("--dry-run", action="store_true", help="print the commands of the stages not done yet")
    args = parser.parse_args(argv)
    stages = [s for s in STAGES if s in args.stages or (s.startswith("eval-") and "eval" in args.stages)]
    steps = plan(args)
    for stage in stages:
        run = MODELS.get(stage.removeprefix("eval-"), (None, None))[1] if stage.startswith("eval-") else None
        if run and not (args.work / run / "log_history.json").is_file() and not args.dry_run:
            print(f"# {stage}: waits for the model {args.work / run}")
        elif stage == "report":
            if args.dry_run:
                print(f"# report -> {args.work / 'fig5'}.json / .md / .png")
            else:
                report(args.work, args.model)
        else:
            try:
                run_stage(args, stage, steps[stage])
            except subprocess.CalledProcessError as exc:
                sys.exit(f"fig5.py: stage {stage} failed (exit status {exc.returncode}): {shlex.join(exc.cmd)}")


if __name__ == "__main__":
    main()
