"""Unrelaxed vs relaxed stability and S.U.N. on the same random subset of each model's samples; JSON and a figure.

    python benchmarks/bench_relax.py --samples D/samples.csv -n 200 --one-by-one 0 --save D/relaxed200.csv
    crystalformer-rl evaluate D/samples.csv -o D/eval                          # all samples, unrelaxed rule
    crystalformer-rl evaluate D/relaxed200.csv --column relaxed_cif -o D/eval_relaxed
    python scripts/relaxed_report.py base=D/eval,D/eval_relaxed rl=R/eval,R/eval_relaxed

Each ``label=UNRELAXED_EVAL,RELAXED_EVAL`` (or ``U1+U2,R1+R2`` to pool draws) pairs the evaluation of the samples
with that of the relaxed subset; rows are joined by name, so the unrelaxed figures are those of the very crystals that were relaxed. A crystal whose
relaxation failed stays in the subset as not stable (as ``check_sun_materials`` counts it).
Uniqueness in the relaxed rule is within the subset, in the unrelaxed rule within all samples. ``--previous`` adds
the bars of models recorded by an earlier run (their evaluation folders need not exist any more).
"""

import argparse
import json
import math
from pathlib import Path

import matplotlib
import pandas as pd
from pymatgen.core import Composition


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def joined(unrelaxed_dir: str, relaxed_dir: str) -> pd.DataFrame:
    before = pd.read_csv(Path(unrelaxed_dir) / "structures.csv")
    after = pd.read_csv(Path(relaxed_dir) / "structures.csv")
    after = after.set_index("name")
    before = before.set_index("name").loc[after.index]
    return pd.DataFrame(
        {
            "e_hull_unrelaxed": before["e_hull"],
            "e_hull_relaxed": after["e_hull"],
            "stable_unrelaxed": before["stable"].fillna(False).astype(bool),
            "stable_relaxed": after["stable"].fillna(False).astype(bool),
            "sun_unrelaxed": before["sun"].fillna(False).astype(bool),
            "sun_relaxed": after["sun"].fillna(False).astype(bool),
            "single_element": after["formula"].map(lambda f: isinstance(f, str) and Composition(f).is_element),
        }
    )


def rates(table: pd.DataFrame) -> dict:
    n = len(table)
    out = {"n": n}
    for column in ("stable_unrelaxed", "stable_relaxed", "sun_unrelaxed", "sun_relaxed"):
        p = float(table[column].mean())
        out[column] = round(100 * p, 1)
        out[f"{column}_stderr"] = round(100 * math.sqrt(p * (1 - p) / n), 1)
    out["relaxed_scored"] = int(table["e_hull_relaxed"].notna().sum())
    # an RL collapse onto elements (H2, O2, Hg) can inflate S.U.N.: report it without them too
    out["single_element"] = round(100 * float(table["single_element"].mean()), 1)
    out["sun_relaxed_multi_element"] = round(100 * float((table["sun_relaxed"] & ~table["single_element"]).mean()), 1)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="label=UNRELAXED_EVAL_DIR,RELAXED_EVAL_DIR")
    parser.add_argument("--output", default="docs/figures/relaxed_vs_unrelaxed.png")
    parser.add_argument("--record", help="where the rates go as JSON (default: --output with .json)")
    parser.add_argument("--previous", help="a record of an earlier run whose models join the bars")
    args = parser.parse_args()
    record_path = Path(args.record) if args.record else Path(args.output).with_suffix(".json")

    tables = {}
    for pair in args.pairs:
        label, dirs = pair.split("=", 1)
        unrelaxed, relaxed = dirs.split(",")
        # U1+U2,R1+R2 pools two draws (e.g. seeds); keys keep their names apart
        parts = [joined(u, r) for u, r in zip(unrelaxed.split("+"), relaxed.split("+"), strict=True)]
        tables[label] = pd.concat(parts, keys=range(len(parts)))
    record = json.loads(Path(args.previous).read_text()) if args.previous else {}
    record.update({label: rates(t) for label, t in tables.items()})

    fig, (scatter, bars) = plt.subplots(1, 2, figsize=(11, 4.4))
    colors = {label: f"C{i}" for i, label in enumerate(record)}  # the same colour in both panels
    for label, table in tables.items():
        ok = table.dropna(subset=["e_hull_unrelaxed", "e_hull_relaxed"])
        scatter.scatter(ok["e_hull_unrelaxed"], ok["e_hull_relaxed"], s=9, alpha=0.6, color=colors[label], label=label)
    # symmetric-log axes: E_hull spans -0.3 to ~15 eV/atom, and the stability threshold (0.1) must stay visible
    top = max(15.0, max(float(t[["e_hull_unrelaxed", "e_hull_relaxed"]].max().max()) for t in tables.values()) * 1.1)
    scatter.plot([-0.5, top], [-0.5, top], "k--", lw=0.8, label="unchanged")
    scatter.axhline(0.1, color="grey", lw=0.8)
    scatter.axvline(0.1, color="grey", lw=0.8)
    for axis in ("x", "y"):
        getattr(scatter, f"set_{axis}scale")("symlog", linthresh=0.1, linscale=0.5)
        getattr(scatter, f"set_{axis}lim")(-0.5, top)
    scatter.set_xlabel("E_hull as sampled (eV/atom, symlog)")
    scatter.set_ylabel("E_hull after CHGNet relaxation (eV/atom, symlog)")
    scatter.set_title("Relaxation moves crystals toward the hull")
    scatter.legend()
    names = ["stable\nunrelaxed", "stable\nrelaxed", "S.U.N.\nunrelaxed", "S.U.N.\nrelaxed"]
    keys = ["stable_unrelaxed", "stable_relaxed", "sun_unrelaxed", "sun_relaxed"]
    width = 0.8 / len(record)
    marker_label = "S.U.N. relaxed without single-element crystals"
    for i, (label, r) in enumerate(record.items()):
        xs = [k + (i - (len(record) - 1) / 2) * width for k in range(len(keys))]
        bars.bar(
            xs,
            [r[k] for k in keys],
            width,
            yerr=[r[f"{k}_stderr"] for k in keys],
            color=colors[label],
            label=f"{label} (n = {r['n']})",
            capsize=3,
        )
        if "sun_relaxed_multi_element" in r:  # what is left of relaxed S.U.N. without the elemental crystals
            bars.scatter(
                xs[-1],
                r["sun_relaxed_multi_element"],
                marker="_",
                s=400,
                color="black",
                zorder=3,
                label=marker_label,
            )
            marker_label = None  # one legend entry
    bars.set_xticks(range(len(keys)), names)
    bars.set_ylabel("% of the relaxed subset")
    bars.set_title("Same crystals, before and after relaxation")
    tallest = max(r[k] + r[f"{k}_stderr"] for r in record.values() for k in keys)
    bars.set_ylim(0, tallest * (1.15 + 0.08 * len(record)))  # room for the legend above the bars
    bars.legend(loc="upper left", fontsize="small")
    bars.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, dpi=130)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
