"""Physics check of the default reward models against DFT data; prints JSON.

* E_hull (``EhullReward()``: CHGNet r2SCAN, GGA+MP2020 fallback, shipped MP hull) on MP structures with DFT
  e_above_hull (MP-20 binary/ternary test rows, MPTS-52 test rows): MAE and stable/unstable F1 at 0.1 eV/atom,
  also split by the energy scale each structure was scored on, and an r2SCAN-only variant.
* Band gap (shipped MEGNet, PBE) against the ``band_gap`` column of the same MP-20 rows and of WBM rows.
* WBM hypothetical structures: E_hull distribution and formation energy against WBM's DFT values.
* Dielectric: the held-out metrics recorded by ``scripts/train_dielectric.py``.

    python scripts/check_rewards.py [--n 300] [--out check.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from crystalformer_rl.materials.properties import DIELECTRIC_MODEL_DIR
from crystalformer_rl.reward_models import BandGapReward, EhullReward


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load(path: Path, n: int, seed: int) -> pd.DataFrame:
    df = pd.read_csv(path)
    return df.sample(min(n, len(df)), random_state=seed).reset_index(drop=True)


def structures_of(df: pd.DataFrame) -> list[Structure]:
    return [Structure.from_str(c, fmt="cif") for c in df["cif"]]


def classification(pred: np.ndarray, true: np.ndarray, threshold: float = 0.1) -> dict[str, float]:
    p, t = pred < threshold, true < threshold
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "precision": precision,
        "recall": recall,
        "accuracy": float((p == t).mean()),
        "dft_stable_fraction": float(t.mean()),
    }


def regression(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    err = pred - true
    return {
        "mae": float(np.abs(err).mean()),
        "median_ae": float(np.median(np.abs(err))),
        "rmse": float(np.sqrt((err**2).mean())),
        "mean_error": float(err.mean()),
    }


def ehull_block(reward: EhullReward, r2scan_only: EhullReward, structures: list[Structure], dft: np.ndarray) -> dict:
    t0 = time.perf_counter()
    values = reward.compute(structures)
    seconds = time.perf_counter() - t0
    scales = [reward.scale_for(s) for s in structures]
    ok = np.array([v is not None for v in values])
    pred = np.array([v if v is not None else np.nan for v in values])
    block = {
        "n": len(structures),
        "n_scored": int(ok.sum()),
        "seconds_per_structure": seconds / len(structures),
        **regression(pred[ok], dft[ok]),
        **classification(pred[ok], dft[ok]),
        "failure_reasons": sorted({r for r in reward.last_stats.reasons if r})[:10],
        "by_scale": {},
    }
    for scale in sorted({s for s in scales if s}):
        m = ok & np.array([s == scale for s in scales])
        if m.sum():
            block["by_scale"][scale] = {
                "n": int(m.sum()),
                **regression(pred[m], dft[m]),
                **classification(pred[m], dft[m]),
            }
    r2 = r2scan_only.compute(structures)
    ok2 = np.array([v is not None for v in r2])
    pred2 = np.array([v if v is not None else np.nan for v in r2])
    block["r2scan_only"] = {
        "n_scored": int(ok2.sum()),
        **regression(pred2[ok2], dft[ok2]),
        **classification(pred2[ok2], dft[ok2]),
    }
    return block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="rows per data set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    t_start = time.time()

    ehull = EhullReward()
    r2scan_only = EhullReward(ehull.calculator, fallback_calculator=None)
    gap = BandGapReward()
    report: dict = {"n_per_set": args.n, "seed": args.seed, "ehull": {}, "band_gap": {}}

    mp20 = load(SHARED / "mp20_biternary" / "test.csv.gz", args.n, args.seed)
    s_mp20 = structures_of(mp20)
    report["ehull"]["mp20_biternary_test"] = ehull_block(
        ehull, r2scan_only, s_mp20, mp20["e_above_hull"].to_numpy(float)
    )
    mpts = load(SHARED / "mpts52" / "test.csv.gz", args.n, args.seed)
    s_mpts = structures_of(mpts)
    report["ehull"]["mpts52_test"] = ehull_block(ehull, r2scan_only, s_mpts, mpts["energy_above_hull"].to_numpy(float))

    g = np.array([v if v is not None else np.nan for v in gap.compute(s_mp20)])
    y = mp20["band_gap"].to_numpy(float)
    ok = ~np.isnan(g)
    report["band_gap"]["mp20_biternary_test"] = {
        "n": int(ok.sum()),
        **regression(g[ok], y[ok]),
        "mae_gapped_only": float(np.abs(g - y)[ok & (y > 0)].mean()),
        "metal_fraction": float((y[ok] == 0).mean()),
    }

    wbm = load(SHARED / "wbm" / "val.csv.gz", args.n, args.seed)
    s_wbm = structures_of(wbm)
    eh = ehull.compute(s_wbm)
    wbm_reasons = sorted({r for r in ehull.last_stats.reasons if r})[:10]
    ok = np.array([v is not None for v in eh])
    eh_arr = np.array([v if v is not None else np.nan for v in eh])
    form = np.full(len(s_wbm), np.nan)
    for i, (s, v) in enumerate(zip(s_wbm, eh)):
        if v is not None:
            form[i] = v + ehull.hull.hull_formation_energy_per_atom(s.composition)
    y_form = wbm["formation_energy_per_atom"].to_numpy(float)
    report["ehull"]["wbm_val"] = {
        "n": len(s_wbm),
        "n_scored": int(ok.sum()),
        "ehull_mean": float(np.nanmean(eh_arr)),
        "ehull_median": float(np.nanmedian(eh_arr)),
        "fraction_below_0.1": float((eh_arr[ok] < 0.1).mean()),
        "fraction_below_0": float((eh_arr[ok] < 0.0).mean()),
        "formation_energy_vs_wbm_dft": regression(form[ok], y_form[ok]),
        "failure_reasons": wbm_reasons,
    }
    gw = np.array([v if v is not None else np.nan for v in gap.compute(s_wbm)])
    yw = wbm["band_gap"].to_numpy(float)
    okw = ~np.isnan(gw) & ~np.isnan(yw)
    report["band_gap"]["wbm_val"] = {"n": int(okw.sum()), **regression(gw[okw], yw[okw])}

    cfg = DIELECTRIC_MODEL_DIR / "config.json"
    if cfg.exists():
        meta = json.loads(cfg.read_text())
        report["dielectric"] = {
            **meta.get("metrics", {}),
            "features": meta.get("features"),
            "paper_anisonet_mae": 0.297,
        }
    report["seconds"] = round(time.time() - t_start, 1)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
