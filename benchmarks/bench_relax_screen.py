"""The relaxation screen (`evaluate --relax_screen EHULL`) against full relaxation, per threshold; prints JSON.

    crystalformer-rl evaluate samples/samples.csv --relax -o eval_full        # every crystal relaxed
    python benchmarks/bench_relax_screen.py eval_full/structures.parquet --thresholds 0.5 1 1.5 2 3 5

The table must come from a *full* relaxation (no screen): the columns `evaluate --relax` writes, `e_hull` (as
sampled) and `e_hull_relaxed`, and where present `relax_steps`, `num_atoms`, `sun_relaxed` (or `unique` and
`novel`). Several tables (e.g. the base model's and the RL model's) are pooled. For each threshold T the screen's
verdicts are what `evaluate --relax_screen T` would give: a crystal whose unrelaxed E_hull is above T is not
relaxed and not stable. It reports

* the agreement of the per-crystal verdicts with full relaxation: stable (`e_hull_relaxed <= ehull_threshold`),
  and S.U.N. where the table has it; the crystals whose verdict changes are exactly the stable (S.U.N.) ones the
  screen drops, as screening never makes a crystal stable. For S.U.N. a dropped crystal is counted as lost even
  when a later stable duplicate of it would take its place, so the S.U.N. agreement is a lower bound;
* the work saved: the fraction of relaxed crystals, of FIRE steps (`relax_steps`) and of atom-steps (steps x
  atoms, the cost of a lockstep relaxation with a batched potential) that the screened crystals took in the full
  run. Wall time falls by less in lockstep: a chunk lasts as long as its slowest crystal;
* the largest unrelaxed E_hull that still ended stable (and S.U.N.), and the smallest threshold in the list that
  keeps at least `--min_agreement` of both verdicts (issue 37: the default only if >= 99.5 %).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


DEFAULT_THRESHOLDS = (0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


def read_tables(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The evaluation tables (CSV or parquet), pooled, with a ``source`` column naming each one's file."""
    frames = []
    for path in paths:
        path = Path(path)
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        frames.append(frame.assign(source=str(path)))
    return pd.concat(frames, ignore_index=True)


def _flag(table: pd.DataFrame, column: str) -> np.ndarray:
    return table[column].astype("boolean").fillna(False).to_numpy(dtype=bool)


def _fraction(part: float, whole: float) -> float | None:
    return float(part / whole) if whole else None


def screen_report(
    table: pd.DataFrame,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    ehull_threshold: float = 0.1,
    min_agreement: float = 0.995,
) -> dict[str, Any]:
    """The screen's verdict agreement with full relaxation and the work it saves, per threshold (module docstring)."""
    missing = [c for c in ("e_hull", "e_hull_relaxed") if c not in table.columns]
    if missing:
        raise ValueError(f"the table has no {', '.join(missing)} column: evaluate it with --relax")
    if "relax_screened" in table.columns and _flag(table, "relax_screened").any():
        raise ValueError("the table was evaluated with --relax_screen: the benchmark needs every crystal relaxed")
    n = len(table)
    e_unrelaxed = pd.to_numeric(table["e_hull"], errors="coerce").to_numpy(dtype=float)
    e_relaxed = pd.to_numeric(table["e_hull_relaxed"], errors="coerce").to_numpy(dtype=float)
    stable = np.nan_to_num(e_relaxed, nan=np.inf) <= ehull_threshold
    if "sun_relaxed" in table.columns:
        sun, sun_from = _flag(table, "sun_relaxed"), "sun_relaxed"
    elif {"unique", "novel"} <= set(table.columns):
        sun, sun_from = stable & _flag(table, "unique") & _flag(table, "novel"), "stable & unique & novel"
    else:
        sun, sun_from = None, None
    if "relax_reason" in table.columns:  # the crystals the full run gave to the relaxer (it failed on some)
        relaxed = (
            table["relax_reason"].isna().to_numpy()
            | table["relax_reason"].astype(str).str.startswith("relaxation failed").to_numpy()
        )
    else:
        relaxed = ~np.isnan(e_unrelaxed)
    steps = pd.to_numeric(table["relax_steps"], errors="coerce") if "relax_steps" in table.columns else None
    steps = None if steps is None or steps.isna().all() else steps.fillna(0).to_numpy(dtype=float)
    atoms = pd.to_numeric(table["num_atoms"], errors="coerce") if "num_atoms" in table.columns else None
    atom_steps = None if steps is None or atoms is None else steps * atoms.fillna(0).to_numpy(dtype=float)

    def largest(mask: np.ndarray | None) -> float | None:
        values = e_unrelaxed[mask & ~np.isnan(e_unrelaxed)] if mask is not None else np.array([])
        return float(values.max()) if values.size else None

    rows = []
    for threshold in sorted(float(t) for t in thresholds):
        screened = relaxed & (np.nan_to_num(e_unrelaxed, nan=-np.inf) > threshold)
        row: dict[str, Any] = {
            "relax_screen": threshold,
            "n_screened": int(screened.sum()),
            "stable_agreement": _fraction(n - int((stable & screened).sum()), n),
            "n_stable_lost": int((stable & screened).sum()),
            "frac_stable_kept": _fraction(int((stable & ~screened).sum()), int(stable.sum())),
        }
        if sun is not None:
            row["sun_agreement"] = _fraction(n - int((sun & screened).sum()), n)
            row["n_sun_lost"] = int((sun & screened).sum())
            row["frac_sun_kept"] = _fraction(int((sun & ~screened).sum()), int(sun.sum()))
        row["work_saved_crystals"] = _fraction(screened.sum(), relaxed.sum())
        if steps is not None:
            row["work_saved_steps"] = _fraction(steps[screened].sum(), steps[relaxed].sum())
            saved = row["work_saved_steps"]
            row["speedup_steps"] = 1 / (1 - saved) if saved is not None and saved < 1 else None
        if atom_steps is not None:
            row["work_saved_atom_steps"] = _fraction(atom_steps[screened].sum(), atom_steps[relaxed].sum())
        agreements = [row["stable_agreement"], row.get("sun_agreement", 1.0)]
        row["keeps_min_agreement"] = all(a is not None and a >= min_agreement for a in agreements)
        rows.append(row)
    keeping = [row["relax_screen"] for row in rows if row["keeps_min_agreement"]]
    return {
        "n_crystals": n,
        "n_relaxed": int(relaxed.sum()),
        "ehull_threshold": ehull_threshold,
        "n_stable_relaxed": int(stable.sum()),
        "n_sun_relaxed": None if sun is None else int(sun.sum()),
        "sun_from": sun_from,
        "max_unrelaxed_ehull_stable": largest(stable),
        "max_unrelaxed_ehull_sun": largest(sun),
        "relax_steps_total": None if steps is None else int(steps[relaxed].sum()),
        "min_agreement": min_agreement,
        "smallest_threshold_keeping_min_agreement": min(keeping) if keeping else None,
        "thresholds": rows,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", help="structures.parquet/.csv of `evaluate --relax` (no screen), pooled")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS), help="eV/atom")
    parser.add_argument("--ehull_threshold", type=float, default=0.1, help="stable: E_hull <= this (eV/atom)")
    parser.add_argument("--min_agreement", type=float, default=0.995, help="verdict agreement a default must keep")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    report = screen_report(read_tables(args.tables), args.thresholds, args.ehull_threshold, args.min_agreement)
    report = {"tables": list(args.tables), **_jsonable(report)}
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
