"""Issue 37 item 1: the logic of benchmarks/bench_relax_screen.py (the screen's verdict agreement with full
relaxation and the work it saves) on a small synthetic table; the benchmark itself runs later on real data."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_relax_screen.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_relax_screen", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def full_relaxation_table() -> pd.DataFrame:
    """Six crystals as `evaluate --relax` writes them: two S.U.N. (unrelaxed 0.05 and 0.6), one stable duplicate
    (unrelaxed 1.2), one unstable, one whose relaxation failed and one that was not built."""
    return pd.DataFrame(
        {
            "e_hull": [0.05, 0.6, 1.2, 2.0, 3.5, np.nan],
            "e_hull_relaxed": [-0.1, 0.05, 0.08, 0.5, np.nan, np.nan],
            "relax_steps": pd.array([10, 100, 500, 500, None, None], dtype="Int64"),
            "num_atoms": pd.array([4, 8, 10, 20, 5, None], dtype="Int64"),
            "relax_reason": [None, None, None, None, "relaxation failed: boom", "no structure"],
            "relax_screened": [False] * 6,
            "unique": [True, True, False, True, True, False],
            "novel": [True] * 5 + [False],
            "sun_relaxed": [True, True, False, False, False, False],
        }
    )


def test_screen_report_counts_verdicts_and_work_per_threshold(bench):
    report = bench.screen_report(full_relaxation_table(), thresholds=[5.0, 0.5, 1.0, 1.5])
    assert report["n_crystals"] == 6 and report["n_relaxed"] == 5
    assert report["n_stable_relaxed"] == 3 and report["n_sun_relaxed"] == 2 and report["sun_from"] == "sun_relaxed"
    assert report["max_unrelaxed_ehull_stable"] == 1.2 and report["max_unrelaxed_ehull_sun"] == 0.6
    assert report["relax_steps_total"] == 1110
    rows = {row["relax_screen"]: row for row in report["thresholds"]}
    assert list(rows) == [0.5, 1.0, 1.5, 5.0]  # sorted
    half = rows[0.5]  # screens the crystals at 0.6, 1.2, 2.0 and the failed one at 3.5
    assert half["n_screened"] == 4 and half["n_stable_lost"] == 2 and half["n_sun_lost"] == 1
    assert half["stable_agreement"] == pytest.approx(4 / 6) and half["sun_agreement"] == pytest.approx(5 / 6)
    assert half["frac_stable_kept"] == pytest.approx(1 / 3) and half["frac_sun_kept"] == pytest.approx(1 / 2)
    assert half["work_saved_crystals"] == pytest.approx(4 / 5)
    assert half["work_saved_steps"] == pytest.approx(1100 / 1110)
    assert half["work_saved_atom_steps"] == pytest.approx(15800 / 15840)
    one = rows[1.0]
    assert one["n_stable_lost"] == 1 and one["n_sun_lost"] == 0 and one["sun_agreement"] == 1.0
    assert one["work_saved_steps"] == pytest.approx(1000 / 1110) and one["speedup_steps"] == pytest.approx(1110 / 110)
    assert [rows[t]["keeps_min_agreement"] for t in rows] == [False, False, True, True]
    assert rows[1.5]["stable_agreement"] == 1.0 and rows[1.5]["work_saved_crystals"] == pytest.approx(2 / 5)
    assert rows[5.0]["n_screened"] == 0 and rows[5.0]["work_saved_steps"] == 0
    assert report["smallest_threshold_keeping_min_agreement"] == 1.5


def test_screen_report_without_sun_steps_or_full_relaxation(bench):
    table = full_relaxation_table().drop(columns=["sun_relaxed", "relax_steps", "num_atoms"])
    report = bench.screen_report(table, thresholds=[1.0])
    assert report["sun_from"] == "stable & unique & novel" and report["n_sun_relaxed"] == 2  # the duplicate is out
    (row,) = report["thresholds"]
    assert "work_saved_steps" not in row and row["work_saved_crystals"] == pytest.approx(3 / 5)
    plain = bench.screen_report(table.drop(columns=["unique", "novel"]), thresholds=[1.0])
    assert plain["n_sun_relaxed"] is None and "sun_agreement" not in plain["thresholds"][0]
    with pytest.raises(ValueError, match="e_hull_relaxed"):
        bench.screen_report(table.drop(columns=["e_hull_relaxed"]))
    with pytest.raises(ValueError, match="every crystal relaxed"):
        bench.screen_report(table.assign(relax_screened=[False, True, False, False, False, False]))


def test_the_script_pools_tables_and_prints_json(bench, tmp_path, capsys):
    table = full_relaxation_table()
    table.iloc[:3].to_parquet(tmp_path / "base.parquet")
    table.iloc[3:].to_csv(tmp_path / "rl.csv", index=False)
    out = tmp_path / "screen.json"
    argv = [str(tmp_path / "base.parquet"), str(tmp_path / "rl.csv"), "--thresholds", "1", "--output", str(out)]
    assert bench.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and printed["n_crystals"] == 6
    assert printed["thresholds"][0]["n_stable_lost"] == 1 and printed["tables"][1].endswith("rl.csv")
