"""Before/after numbers and figures of an RL (or DPO) demo from `crystalformer-rl evaluate` outputs.

    python scripts/rl_demo_report.py --eval base=runs/v3/base/eval rl=runs/v3/rl/eval:runs/rl-ehull-v3 \
        --space-groups base=runs/v3/base_sg/eval rl=runs/v3/rl_sg/eval --output docs/figures/rl_ehull
    python scripts/rl_demo_report.py --checkpoint-at-kl runs/rl-ehull 1.5     # a run's checkpoint nearest KL 1.5

Each ``--eval LABEL=EVAL_DIR[+EVAL_DIR...][:RUN_DIR]`` is an evaluation folder (``structures.csv``,
``summary.json``; several joined by ``+``, e.g. two seeds, are pooled) and optionally the training run that made
the model (its ``log_history.json`` gives the last logged KL to the base model and the compute). Writes
``<output>_summary.json`` / ``.md`` (stable, unique, novel, S.U.N., S.U.N. per second, single-element share,
distinct stable chemical systems, median E_hull, KL) and ``<output>_ehull.png``
(overlaid E_hull histograms) and ``<output>_rates.png`` (stable and S.U.N. bars per model with its KL); with ``--curves``, ``<output>_curves.png`` (stable fraction, KL, uniqueness and
single-element share against the step); with ``--preference-curves`` (DPO runs), ``<output>_preference.png``
(held-out loss, held-out and training preference accuracy, KL to the reference against the step); with ``--space-groups``, ``<output>_space_groups.png`` (stable and S.U.N. rates per
space group, Fig. 4 of the paper).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd


def elements(formula) -> tuple[str, ...]:
    return tuple(sorted(set(re.findall(r"[A-Z][a-z]?", formula)))) if isinstance(formula, str) else ()


def log_history(run_dir: Path) -> list[dict]:
    """A run's logged history: ``log_history.json`` of a finished run, else its newest checkpoint's trainer state."""
    if (run_dir / "log_history.json").exists():
        return json.loads((run_dir / "log_history.json").read_text())
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return json.loads(states[-1].read_text())["log_history"] if states else []


def run_facts(run_dir: Path | None) -> dict:
    if run_dir is None:
        return {}
    if (run_dir / "trainer_state.json").exists():  # a checkpoint: its own state, up to its step
        history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    else:
        history = log_history(run_dir)
    # RL logs the sampled batches' KL as "kl"; DPO logs the KL of fresh policy samples at each evaluation
    preference = any("eval_kl" in h for h in history)
    history = [dict(h, kl=h["eval_kl"]) if "eval_kl" in h else h for h in history]
    logged = [h for h in history if "kl" in h]
    last = logged[-1] if logged else {}
    tail = logged[-1:] if preference else logged[-5:]  # a DPO evaluation already averages 256 fresh samples
    end = next((h for h in reversed(history) if "train_runtime" in h), {})
    return {
        "steps": last.get("step"),
        "kl_last": last.get("kl"),
        "kl_last5_mean": sum(h["kl"] for h in tail) / len(tail) if tail else None,
        "reward_last5_mean": sum(h.get("reward", float("nan")) for h in tail) / len(tail) if tail else None,
        "train_minutes": round(end["train_runtime"] / 60, 1) if "train_runtime" in end else None,
    }


def checkpoint_at_kl(run_dir: Path, target: float, window: int = 5) -> Path:
    """The checkpoint of an RL run whose KL to the base model (mean of the ``window`` logged batches up to it) is
    closest to ``target``: how two runs are compared "at matched KL"."""
    history = json.loads((run_dir / "log_history.json").read_text())
    logged = [(h["step"], h["kl"]) for h in history if "kl" in h]
    best, best_gap = None, float("inf")
    for folder in run_dir.glob("checkpoint-*"):
        step = int(folder.name.split("-")[1])
        recent = [kl for s, kl in logged if s <= step][-window:]
        if recent and abs(sum(recent) / len(recent) - target) < best_gap:
            best, best_gap = folder, abs(sum(recent) / len(recent) - target)
    if best is None:
        raise ValueError(f"{run_dir}: no checkpoint with a logged KL")
    return best


def facts(eval_dirs: list[Path], run_dir: Path | None) -> dict:
    """The numbers of one model; several evaluation folders (e.g. seeds 1 and 2) are pooled: their tables are
    concatenated and their summaries' fractions averaged, weighted by the number of samples."""
    tables = [pd.read_csv(d / "structures.csv") for d in eval_dirs]
    summaries = [json.loads((d / "summary.json").read_text()) for d in eval_dirs]
    table = pd.concat(tables, ignore_index=True)
    n = len(table)

    def pooled(key):
        values = [(s.get(key), len(t)) for s, t in zip(summaries, tables)]
        if any(v is None for v, _ in values):
            return None
        return sum(v * m for v, m in values) / n

    systems = table["formula"].map(elements)
    stable = table["stable"].fillna(False).astype(bool) if "stable" in table else pd.Series(False, index=table.index)
    out = {
        "n": n,
        "struct_valid": pooled("frac_struct_valid"),
        "comp_valid": pooled("frac_comp_valid"),
        "stable_unrelaxed": pooled("frac_stable_unrelaxed"),
        "stable_relaxed": pooled("frac_stable_relaxed"),
        "unique": pooled("frac_unique"),
        "novel": pooled("frac_novel"),
        "sun_unrelaxed": pooled("frac_sun_unrelaxed"),
        "sun_relaxed": pooled("frac_sun_relaxed"),
        "sun_per_second": pooled("sun_per_second"),
        "single_element": float((systems.map(len) == 1).sum() / n) if n else None,
        "distinct_stable_chemical_systems": int(systems[stable & (systems.map(len) > 0)].nunique()),
        "distinct_stable_formulas": int(table.loc[stable, "formula"].nunique()),
        "e_hull_median": float(table["e_hull"].median()) if "e_hull" in table else None,
    }
    out.update(run_facts(run_dir))
    return out


def parse(specs):
    """``LABEL=DIR[+DIR...][:RUN_DIR]`` -> {label: ([dirs], run_dir)}."""
    parsed = {}
    for spec in specs:
        label, _, rest = spec.partition("=")
        dirs, _, run_dir = rest.partition(":")
        parsed[label] = ([Path(d) for d in dirs.split("+")], Path(run_dir) if run_dir else None)
    return parsed


def markdown(rows: dict[str, dict]) -> str:
    keys = [
        "n",
        "struct_valid",
        "comp_valid",
        "stable_unrelaxed",
        "stable_relaxed",
        "unique",
        "novel",
        "sun_unrelaxed",
        "sun_relaxed",
        "sun_per_second",
        "single_element",
        "distinct_stable_chemical_systems",
        "e_hull_median",
        "kl_last5_mean",
        "train_minutes",
    ]
    head = "| | " + " | ".join(rows) + " |\n|---|" + "---:|" * len(rows) + "\n"

    def cell(v):
        if v is None:
            return "–"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return head + "".join(f"| {k} | " + " | ".join(cell(r.get(k)) for r in rows.values()) + " |\n" for k in keys)


def plot_runs(runs: dict[str, Path], path: str, window: int = 10) -> None:
    """Stable fraction, KL, uniqueness and single-element share against the step for several runs (moving mean
    over ``window`` sampled batches), so runs with different rewards are compared on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = {
        "stable fraction (E_hull ≤ 0.1, in-batch)": ("rewards/ehull/stable_fraction", "ehull_sun/stable_fraction"),
        "KL(pθ ‖ p_base) per crystal": ("kl",),
        "unique fraction (in-batch)": ("unique_fraction",),
        "single-element fraction": ("single_element_fraction",),
    }
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for label, run_dir in runs.items():
        history = [h for h in json.loads((run_dir / "log_history.json").read_text()) if "kl" in h]
        steps = np.array([h["step"] for h in history])
        for ax, (title, keys) in zip(axes, panels.items()):
            values = np.array([next((h[k] for k in keys if k in h), np.nan) for h in history], dtype=float)
            if np.isnan(values).all():
                continue
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, label=label)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("optimizer step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_preference_runs(runs: dict[str, Path], path: str) -> None:
    """DPO runs against the step: held-out loss, preference accuracy (held-out solid, training dotted) and the KL
    of fresh policy samples to the reference, so where held-out accuracy plateaus and memorising starts is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.4))
    for index, (label, run_dir) in enumerate(runs.items()):
        history = log_history(run_dir)
        color = f"C{index}"
        evals = [h for h in history if "eval_loss" in h]
        train = [h for h in history if "loss" in h and "rewards/accuracies" in h]
        steps = [h["step"] for h in evals]
        axes[0].plot(steps, [h["eval_loss"] for h in evals], "o-", color=color, ms=3, label=label)
        axes[1].plot(
            steps, [h["eval_rewards/accuracies"] for h in evals], "o-", color=color, ms=3, label=f"{label}, held out"
        )
        axes[1].plot(
            [h["step"] for h in train],
            [h["rewards/accuracies"] for h in train],
            ":",
            color=color,
            label=f"{label}, training",
        )
        axes[2].plot(steps, [h["eval_kl"] for h in evals], "o-", color=color, ms=3, label=label)
    axes[0].axhline(0.6931, color="grey", lw=0.8, ls="--")  # ln 2: the loss of a policy equal to the reference
    axes[1].axhline(0.5, color="grey", lw=0.8, ls="--")
    for ax, title in zip(
        axes, ("held-out DPO loss (ln 2 = reference)", "preference accuracy", "KL(πθ ‖ π_ref) of fresh samples")
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
    axes[1].set_ylim(0.4, 1.02)
    axes[1].legend(fontsize=7)
    axes[2].set_yscale("symlog", linthresh=0.01)  # the sampled KL estimate of a barely moved policy can dip below 0
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rates(rows: dict[str, dict], path: str) -> None:
    """Stable and S.U.N. rates of each model side by side, labelled with its KL to the base model: the comparison
    "at a similar KL" read from one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(rows)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(1.7 * len(labels) + 1.5, 3.6))
    for offset, (key, name) in zip((-0.2, 0.2), (("stable_unrelaxed", "stable"), ("sun_unrelaxed", "S.U.N."))):
        values = np.array([100 * (rows[k].get(key) or 0) for k in labels])
        # binomial standard error of each rate, so a reader sees which differences are ties
        errors = np.sqrt(values * (100 - values) / np.array([rows[k]["n"] for k in labels]))
        bars = ax.bar(x + offset, values, 0.4, yerr=errors, capsize=3, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    kls = [rows[k].get("kl_last5_mean") for k in labels]
    # the base model (first) is at KL 0; another model without a run directory has no known KL
    ticks = [
        f"{k}\nKL {kl:.2g}" if kl is not None else f"{k}\nKL {'0' if i == 0 else '?'}"
        for i, (k, kl) in enumerate(zip(labels, kls))
    ]
    ax.set_xticks(x, ticks, fontsize=7)
    sizes = sorted({rows[k]["n"] for k in labels})
    ax.set_ylabel(f"% of {'/'.join(f'{n:,}' for n in sizes)} fresh samples (unrelaxed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", nargs="+", help="LABEL=EVAL_DIR[+EVAL_DIR...][:RUN_DIR], the base model first")
    parser.add_argument(
        "--space-groups", nargs="*", default=[], help="LABEL=EVAL_DIR[+EVAL_DIR...] of per-space-group draws"
    )
    parser.add_argument("--histogram", nargs="*", default=None, help="labels of --eval in the histogram (default all)")
    parser.add_argument("--curves", nargs="*", default=[], help="LABEL=RUN_DIR of RL runs to plot against the step")
    parser.add_argument(
        "--preference-curves", nargs="*", default=[], help="LABEL=RUN_DIR of DPO runs to plot against the step"
    )
    parser.add_argument("--title", default="E_hull of 1,000 fresh samples (CHGNet, unrelaxed)", help="histogram title")
    parser.add_argument("--output", help="path prefix of the outputs")
    parser.add_argument(
        "--checkpoint-at-kl", nargs=2, metavar=("RUN_DIR", "KL"), help="print the run's checkpoint nearest that KL"
    )
    args = parser.parse_args()
    if args.checkpoint_at_kl:
        print(checkpoint_at_kl(Path(args.checkpoint_at_kl[0]), float(args.checkpoint_at_kl[1])))
        return
    if not args.eval or not args.output:
        parser.error("--eval and --output are required (unless --checkpoint-at-kl)")

    from crystalformer_rl.evaluation.evaluate import space_group_table
    from crystalformer_rl.evaluation.plots import plot_ehull_histogram, plot_space_group_rates

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = parse(args.eval)
    rows = {label: facts(eval_dir, run_dir) for label, (eval_dir, run_dir) in runs.items()}
    Path(f"{out}_summary.json").write_text(json.dumps(rows, indent=2))
    Path(f"{out}_summary.md").write_text(markdown(rows))
    plot_rates(rows, f"{out}_rates.png")
    shown = args.histogram or list(runs)
    plot_ehull_histogram(
        {
            label: pd.concat([pd.read_csv(d / "structures.csv") for d in dirs])["e_hull"].tolist()
            for label, (dirs, _) in runs.items()
            if label in shown
        },
        f"{out}_ehull.png",
        title=args.title,
    )
    if args.curves:
        plot_runs({label: dirs[0] for label, (dirs, _) in parse(args.curves).items()}, f"{out}_curves.png")
    if args.preference_curves:
        plot_preference_runs(
            {label: dirs[0] for label, (dirs, _) in parse(args.preference_curves).items()}, f"{out}_preference.png"
        )
    if args.space_groups:
        tables = {  # pooled draws (DIR1+DIR2) are counted together, as in --eval
            label: space_group_table(pd.concat([pd.read_csv(d / "structures.csv") for d in dirs], ignore_index=True))
            for label, (dirs, _) in parse(args.space_groups).items()
        }
        plot_space_group_rates(
            tables,
            f"{out}_space_groups.png",
            columns=("frac_stable_unrelaxed", "frac_sun_unrelaxed"),
            top=14,
            title="per space group: stable and S.U.N. (unrelaxed)",
        )
    print(markdown(rows))


if __name__ == "__main__":
    main()
