"""How the sampling temperature and nucleus threshold trade validity, stability and novelty for one model.

    python scripts/sampling_sweep.py --model default -n 1000 --work runs/sampling_sweep \
        --output docs/figures/default_model_sampling

For every (T, top_p) setting: ``crystalformer-rl sample -n N --seed S -T T --top_p P`` (the training space-group
distribution), then ``crystalformer-rl evaluate`` (unrelaxed CHGNet E_hull vs the shipped MP hull, SMACT 2014
composition validity, novelty against the shipped corpus). Writes ``<output>.json`` and ``<output>.md`` (one row
per setting) and ``<output>.png`` (stable and S.U.N. fractions against novelty). A finished setting is reused
when rerun. T = 1, top_p = 1 is the model's own distribution (the reference's default and the metric the
literature reports); the other rows change what is sampled, not the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


SETTINGS = [(1.0, 1.0), (0.9, 1.0), (0.8, 1.0), (0.7, 1.0), (1.0, 0.9), (1.0, 0.8), (0.9, 0.9), (0.8, 0.95)]
COLUMNS = ["struct_valid", "comp_valid", "scorable", "unique", "novel", "stable", "sun"]


def run_setting(model: str, n: int, seed: int, temperature: float, top_p: float, work: Path) -> dict:
    folder = work / f"T{temperature}_p{top_p}"
    summary = folder / "eval" / "summary.json"
    if not summary.exists():
        cli = [sys.executable, "-m", "crystalformer_rl.cli"]
        subprocess.run(
            [*cli, "sample", "--model", model, "-n", str(n), "--seed", str(seed), "-T", str(temperature)]
            + ["--top_p", str(top_p), "--format", "csv", "-o", str(folder)],
            check=True,
        )
        subprocess.run([*cli, "evaluate", str(folder / "samples.csv"), "-o", str(folder / "eval")], check=True)
    d = json.loads(summary.read_text())
    total = d["n_total"]
    return {
        "temperature": temperature,
        "top_p": top_p,
        "n": total,
        "struct_valid": d["frac_struct_valid"],
        "comp_valid": d["frac_comp_valid"],
        "scorable": d["n_ehull"] / total,
        "unique": d["frac_unique"],
        "novel": d["frac_novel"],
        "stable": d["frac_stable_unrelaxed"],
        "sun": d["frac_sun_unrelaxed"],
        "ehull_median": d["ehull_median"],
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    x = [r["novel"] * 100 for r in rows]
    stable, sun = [r["stable"] * 100 for r in rows], [r["sun"] * 100 for r in rows]
    ax.vlines(x, sun, stable, color="0.8", zorder=0)  # one setting = one vertical pair
    ax.scatter(x, stable, marker="o", label="stable (E_hull ≤ 0.1 eV/atom)")
    ax.scatter(x, sun, marker="s", label="S.U.N.")
    for r, xi, yi in zip(rows, x, stable):
        label = f"T={r['temperature']:g}, p={r['top_p']:g}"
        ax.annotate(label, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("novel (%)")
    ax.set_ylabel("fraction of all samples (%)")
    ax.set_title(f"Sampling settings, {rows[0]['n']} samples each (unrelaxed CHGNet)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default="runs/sampling_sweep")
    parser.add_argument("--output", default="docs/figures/default_model_sampling")
    args = parser.parse_args()
    work, output = Path(args.work), Path(args.output)
    rows = [run_setting(args.model, args.n, args.seed, t, p, work) for t, p in SETTINGS]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(
        json.dumps({"model": args.model, "seed": args.seed, "rows": rows}, indent=1)
    )
    lines = ["| T | top_p | " + " | ".join(COLUMNS) + " | E_hull median |", "|---" * (len(COLUMNS) + 3) + "|"]
    for r in rows:
        cells = [f"{r[c] * 100:.1f} %" for c in COLUMNS]
        lines.append(
            f"| {r['temperature']:g} | {r['top_p']:g} | " + " | ".join(cells) + f" | {r['ehull_median']:.2f} |"
        )
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, output.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
