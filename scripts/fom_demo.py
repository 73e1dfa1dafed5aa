"""The dielectric figure-of-merit demo (paper §III B, Fig. 6): base vs RL-fine-tuned samples in space group 225.

    crystalformer-rl rl --config configs/rl_dielectric.yaml                       # first: the fine-tuned model
    python scripts/fom_demo.py --tuned runs/rl-dielectric -n 500 --output docs/figures/fom_demo

Samples ``-n`` crystals of space group 225 from each model, predicts the band gap E_g (MEGNet), ε∞ (the shipped
ensemble) and the figure of merit ε·E_g, and E_hull (CHGNet vs the MP hull, unrelaxed), then writes

* ``<output>_scatter.png``: E_g vs ε, base and fine-tuned, with FoM isolines and the FoM-vs-step inset (Fig. 6a);
* ``<output>_ehull.png``: E_hull histograms of both (Fig. 6b);
* ``<output>_candidates.csv`` / ``.md``: the top candidates (formula, E_g, ε, FoM, E_hull, in the training corpus
  or not) of the fine-tuned samples, ranked by FoM;
* ``<output>_summary.json``: the numbers, including how many of the top-``--top`` candidates change when they are
  ranked by the uncertainty-aware FoM (ensemble mean − k·std of log ε∞, ``--k``) instead of the plain one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def sample(model: str, n: int, seed: int, folder: Path) -> Path:
    table = folder / "samples.csv"
    if not table.exists():  # resumable: a finished draw is reused
        cmd = [sys.executable, "-m", "crystalformer_rl.cli", "sample", "--model", model, "-g", "225", "-n", str(n)]
        cmd += ["--seed", str(seed), "-o", str(folder), "--format", "csv"]
        subprocess.run(cmd, check=True)
    return table


def properties(structures, k: float) -> pd.DataFrame:
    from crystalformer_rl.reward_models import BandGapReward, DielectricReward, EhullReward

    band_gap = BandGapReward()
    dielectric = DielectricReward(band_gap=band_gap)
    ok = [i for i, s in enumerate(structures) if s is not None]
    built = [structures[i] for i in ok]
    rows = pd.DataFrame(index=range(len(structures)))
    for column, values in (
        ("band_gap", band_gap.compute(built)),
        ("epsilon", dielectric.compute(built)),
        ("e_hull", EhullReward().compute(built)),
    ):
        rows[column] = pd.Series(dict(zip(ok, values)), dtype="float64")
    members = dielectric.member_log_predictions(built)
    mu = pd.Series({i: float(np.mean(m)) for i, m in zip(ok, members) if m is not None}, dtype="float64")
    sigma = pd.Series({i: float(np.std(m)) for i, m in zip(ok, members) if m is not None}, dtype="float64")
    rows["log_epsilon_std"] = sigma
    rows["fom"] = rows["band_gap"] * rows["epsilon"]
    rows[f"fom_lower_k{k:g}"] = rows["band_gap"] * np.exp(mu - k * sigma)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default", help="the base model")
    parser.add_argument("--tuned", required=True, help="the fine-tuned model (an `rl` output_dir)")
    parser.add_argument("-n", type=int, default=500, help="samples per model")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--k", type=float, default=1.0, help="uncertainty penalty of the re-ranking")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--work", default="runs/fom_demo")
    parser.add_argument("--output", default="docs/figures/fom_demo")
    args = parser.parse_args()

    from crystalformer_rl.evaluation import plots
    from crystalformer_rl.materials.io import load_crystals
    from crystalformer_rl.materials.matching import novelty_checks
    from crystalformer_rl.pretrained import SHIPPED_REFERENCE

    work, out = Path(args.work), Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = {}
    for label, model in (("base", args.base), ("RL", args.tuned)):
        loaded = load_crystals(sample(model, args.n, args.seed, work / label), progress=False)
        frame = properties(loaded.structures, args.k)
        frame.insert(
            0, "formula", [s.composition.reduced_formula if s is not None else None for s in loaded.structures]
        )
        frame.insert(0, "model", label)
        frame["structure"] = loaded.structures
        frames[label] = frame
        frame.drop(columns="structure").to_csv(work / label / "scored.csv", index=False)  # per sample, for reanalysis
    both = pd.concat(frames.values(), ignore_index=True)

    history = json.loads((Path(args.tuned) / "log_history.json").read_text())
    steps = [h["step"] for h in history if "reward" in h]
    fom_curve = [h["reward"] for h in history if "reward" in h]
    plots.plot_property_scatter(
        both["band_gap"],
        both["epsilon"],
        f"{out}_scatter.png",
        xlabel=r"$E_g$ (eV)",
        ylabel=r"$\varepsilon_\infty$",
        groups=both["model"],
        product_isolines=[20, 50, 100],
        logy=True,
        title="space group 225: base vs RL (FoM = ε·E_g)",
        inset=(steps, fom_curve, "mean reward (all terms)"),
    )
    plots.plot_ehull_histogram({k: v["e_hull"].tolist() for k, v in frames.items()}, f"{out}_ehull.png")

    tuned = frames["RL"].dropna(subset=["fom"]).sort_values("fom", ascending=False)
    lower = f"fom_lower_k{args.k:g}"
    top = tuned.head(args.top).copy()
    checks = novelty_checks(list(top["structure"]), SHIPPED_REFERENCE, progress=False)
    top["in_corpus"] = [None if c is None or c.novel is None else not c.novel for c in checks]
    top_lower = tuned.sort_values(lower, ascending=False).head(args.top)
    changed = len(set(top.index) - set(top_lower.index))
    columns = ["formula", "band_gap", "epsilon", "fom", lower, "log_epsilon_std", "e_hull", "in_corpus"]
    top[columns].to_csv(f"{out}_candidates.csv", index=False, float_format="%.4g")
    Path(f"{out}_candidates.md").write_text(top[columns].to_markdown(index=False, floatfmt=".3g") + "\n")

    def stats(frame):
        fom = frame["fom"].dropna()
        useful = (frame["e_hull"] <= 0.1) & (frame["fom"] >= 10)  # stable (unrelaxed) and FoM >= 10 eV
        return {
            "samples": len(frame),
            "scored": int(fom.size),
            "fom_mean": float(fom.mean()) if fom.size else None,
            "fom_median": float(fom.median()) if fom.size else None,
            "fom_max": float(fom.max()) if fom.size else None,
            "stable_fraction_unrelaxed": float((frame["e_hull"] <= 0.1).mean()),
            "e_hull_median": float(frame["e_hull"].median()),
            "stable_with_fom_at_least_10": int(useful.sum()),
            "distinct_stable_formulas_with_fom_at_least_10": int(frame.loc[useful, "formula"].nunique()),
            "unique_formula_fraction": float(frame["formula"].nunique() / max(len(frame), 1)),
        }

    summary = {
        "space_group": 225,
        "models": {"base": args.base, "RL": args.tuned},
        **{label: stats(frame) for label, frame in frames.items()},
        "uncertainty_penalty_k": args.k,
        f"top{args.top}_changed_by_uncertainty_ranking": changed,
        "top_in_corpus": int(top["in_corpus"].fillna(False).sum()),
    }
    Path(f"{out}_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
