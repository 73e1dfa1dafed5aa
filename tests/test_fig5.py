"""Issue 37 item 2: scripts/fig5.py, the Fig. 5 comparison's orchestration and report. The report is checked on
small evaluation folders written by the real evaluation (`evaluate_structures`, `EvaluationResult.save`) on real MP
crystals, with scripted E_hull values (the potential's numbers are not what is tested); the commands it plans are
parsed by the command line's own parsers; the SFT step trains a tiny model for one step on relaxed crystals."""

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Structure

from tests.conftest import SHARED


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fig5.py"
PILOT = SHARED / "data" / "mp20_pilot"
GROUPS = (225, 62)  # six crystals of each, distinct formulas
# per model: (unrelaxed-stable indices among the 12, relaxed-stable indices among the first 8)
STABLE = {
    "base": ({0, 1, 2, 6}, {0, 1, 6, 7}),  # 225: 3/6, 62: 1/6; relaxed 4/8
    "sft": ({0, 1, 2, 3, 6}, {0, 1, 2, 6, 7}),
    "rl-sun": ({0, 1, 2, 3, 6, 7}, {0, 1, 2, 3, 6, 7}),
}
PRIOR = {225: 1, 62: 3, 1: 4}  # the base model's training space groups: P1 never sampled here (coverage 1/2)


@pytest.fixture(scope="module")
def fig5():
    spec = importlib.util.spec_from_file_location("fig5", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def crystals():
    """Twelve real MP-20 crystals, six in Fm-3m and six in Pnma, as sampler rows (tokens, the G asked for)."""
    from crystalformer_rl.tokenization import CrystalTokenizer

    val = pd.read_csv(PILOT / "val.csv.gz").drop_duplicates("pretty_formula")
    tokenizer = CrystalTokenizer()
    rows = []
    for group in GROUPS:
        for cif in val.loc[val["spacegroup.number"] == group, "cif"]:
            structure = Structure.from_str(cif, fmt="cif")
            tokens = tokenizer.encode(structure)
            if tokens.G == group and sum(r["G"] == group for r in rows) < 6:
                rows.append({"G": group, "tokens": tokens.to_string(), "structure": structure})
    assert len(rows) == 12
    return rows


def scripted_ehull(originals: list[Structure], stable: set[int], stable_relaxed: set[int]):
    """E_hull by formula: 0.05 for the stable ones, 0.8 else; a relaxed crystal (its volume moved) by the relaxed set."""
    index = {s.composition.reduced_formula: (i, s.volume) for i, s in enumerate(originals)}

    def fn(structures):
        out = []
        for s in structures:
            i, volume = index[s.composition.reduced_formula]
            relaxed = abs(s.volume - volume) > 1e-6
            out.append(0.05 if i in (stable_relaxed if relaxed else stable) else 0.8)
        return out

    return fn


@pytest.fixture(scope="module")
def work(tmp_path_factory, crystals, fig5):
    """A work folder as the pipeline leaves it for three of the five models: samples, both evaluations, runs."""
    from crystalformer_rl.evaluation import evaluate_structures
    from crystalformer_rl.materials.matching import ReferenceIndex
    from tests.helpers.rl_toy import tiny_model

    root = tmp_path_factory.mktemp("fig5")
    work = root / "work"
    base = root / "base-model"
    tiny_model(0).save_pretrained(base)
    (base / "space_group_distribution.json").write_text(json.dumps(PRIOR))
    reference = ReferenceIndex.from_file(PILOT / "train.csv.gz", progress=False)
    structures = [r["structure"] for r in crystals]
    names = [f"sample-{i:06d}" for i in range(12)]
    groups = pd.DataFrame({"G": [r["G"] for r in crystals]})

    def relax_fn(batch):  # the stand-in relaxation shrinks each cell by 1 %
        out = []
        for s in batch:
            moved = s.copy()
            moved.scale_lattice(s.volume * 0.99)
            out.append((moved, -1.0))
        return out

    for seed, (key, (stable, stable_relaxed)) in enumerate(STABLE.items()):
        out = work / "eval" / key
        (out / "samples").mkdir(parents=True)
        samples = pd.DataFrame({"id": names, "G": groups["G"], "tokens": [r["tokens"] for r in crystals]})
        samples.to_csv(out / "samples" / "samples.csv", index=False)
        ehull_fn = scripted_ehull(structures, stable, stable_relaxed)
        common = {"reference": reference, "ehull_fn": ehull_fn, "progress": False}
        unrelaxed = evaluate_structures(structures, names=names, extra=groups, **common)
        unrelaxed.save(out / "unrelaxed", formats=("csv",), plots=False)
        relaxed = evaluate_structures(
            structures[:8], names=names[:8], extra=groups[:8], relax=True, relax_fn=relax_fn, **common
        )
        relaxed.save(out / "relaxed", formats=("csv",), plots=False)
        if key != "base":
            run = work / key
            tiny_model(seed).save_pretrained(run)
            history = [{"step": s, "loss": 30.0 - s} for s in (1, 2)]
            if key == "rl-sun":  # RL logs the KL of each sampled batch
                history = [{"step": s, "kl": 0.1 * s, "reward": -0.5} for s in range(1, 8)]
            (run / "log_history.json").write_text(json.dumps(history))
    compute = {
        "stages": {
            "base": {"cpu_minutes": 1.0, "wall_x_threads_minutes": 1.5, "runs": [{"finished": True}]},
            "sft-data": {"cpu_minutes": 100.0, "wall_x_threads_minutes": 120.0, "runs": [{"finished": False}]},
            "sft": {"cpu_minutes": 10.0, "wall_x_threads_minutes": 11.0, "runs": [{"finished": True}]},
            "rl-sun": {
                "cpu_minutes": 70.0,
                "wall_x_threads_minutes": 80.0,
                "runs": [{"finished": False}, {"finished": True}],  # interrupted, then resumed to its end
            },
            "eval-base": {"cpu_minutes": 200.0, "wall_x_threads_minutes": 210.0},
        }
    }
    (work / "compute.json").write_text(json.dumps(compute))
    return work, str(base)


def test_report_rates_standard_errors_weighting_and_table(fig5, work):
    work, base = work
    rows = {r["key"]: r for r in fig5.report(work, base)}
    assert list(rows) == ["base", "sft", "rl-sun"]  # DPO and stability-only RL not evaluated: left out

    b = rows["base"]
    # the fixture's crystals are novel and unique, so S.U.N. is the scripted stability
    assert b["n"] == 12 and b["sun_unrelaxed"] == pytest.approx(4 / 12) and b["unique"] == b["novel"] == 1.0
    assert b["n_relaxed"] == 8 and b["sun_relaxed"] == pytest.approx(0.5)
    assert b["sun_relaxed_stderr"] == pytest.approx(math.sqrt(0.5 * 0.5 / 8))
    assert b["sun_unrelaxed_stderr"] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 12))
    # weighted by the prior over the groups sampled: Fm-3m 1/4 at 3/6, Pnma 3/4 at 1/6; P1's half not covered
    weighted = b["sun_unrelaxed_weighted"]
    assert weighted["rate"] == pytest.approx(0.25 * 0.5 + 0.75 / 6) and weighted["covered"] == pytest.approx(0.5)
    se = math.sqrt(0.25**2 * 0.25 / 6 + 0.75**2 * (1 / 6) * (5 / 6) / 6)
    assert weighted["stderr"] == pytest.approx(se)
    # relaxed subset: the first 8 are Fm-3m 0-5 (stable 0, 1) and Pnma 6-7 (both stable)
    assert b["sun_relaxed_weighted"]["rate"] == pytest.approx(0.25 * 2 / 6 + 0.75 * 1.0)
    assert b["kl_samples"]["kl"] == 0.0 and b["kl_last5_mean"] is None

    r = rows["rl-sun"]
    assert r["sun_relaxed"] == pytest.approx(6 / 8)
    assert r["delta_relaxed"] == pytest.approx(0.25)
    assert r["delta_relaxed_stderr"] == pytest.approx(math.hypot(math.sqrt(0.75 * 0.25 / 8), math.sqrt(0.25 / 8)))
    assert r["kl_last5_mean"] == pytest.approx(0.5)  # the last five logged batches: 0.3 ... 0.7
    assert r["cpu_minutes_method"] == 70.0 and r["cpu_minutes_method_complete"]
    # SFT's cost includes the base sample and its relaxations
    s = rows["sft"]
    assert s["cpu_minutes_method"] == pytest.approx(111.0) and s["wall_x_threads_minutes_method"] == 132.5
    assert not s["cpu_minutes_method_complete"]  # its relaxations were interrupted and never finished
    assert math.isfinite(s["kl_samples"]["kl"]) and s["kl_samples"]["n"] == 12  # tiny model 1 vs tiny model 0
    assert (work / "eval" / "sft" / "kl.json").is_file()  # cached for the next report

    table = (work / "fig5.md").read_text().splitlines()
    assert len(table) == 2 + 3
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table[2:]}
    assert cells["base"][1] == "33.3 % (12)" and cells["base"][2] == "50.0 ± 17.7 % (8)"
    assert cells["base"][5] == "25.0 ± 12.5 %" and cells["base"][10] == "– (pretraining)"
    assert cells["RL S.U.N.-aware (recipe)"][3] == "25.0 ± 23.4 pts" and cells["SFT"][10] == "111.0 (partial)"
    record = json.loads((work / "fig5.json").read_text())
    assert [m["key"] for m in record["models"]] == ["base", "sft", "rl-sun"]
    assert (work / "fig5.png").read_bytes()[:4] == b"\x89PNG"


def test_sample_kl_on_a_models_own_samples(fig5, tmp_path):
    """KL to itself is 0; the log-likelihood of the written tokens is the sampler's own (6-decimal tokens)."""
    from crystalformer_rl.commands import parse_args
    from crystalformer_rl.commands.sample import run_sample
    from tests.helpers.rl_toy import tiny_model

    a, b = tmp_path / "a", tmp_path / "b"
    tiny_model(0).save_pretrained(a)
    tiny_model(1).save_pretrained(b)
    run_sample(*parse_args("sample", ["--model", str(a), "-n", "40", "--seed", "3", "-o", str(tmp_path / "s")]))
    samples = tmp_path / "s" / "samples.csv"
    assert fig5.sample_kl(samples, str(a), str(a)) == {"kl": 0.0, "stderr": 0.0, "n": 40}
    # the written tokens (6 decimals) give back the sampler's own log-likelihoods
    written = pd.read_csv(samples)["logp"].to_numpy()
    assert fig5.token_logp(samples, str(a)) == pytest.approx(written, abs=0.05)
    kl = fig5.sample_kl(samples, str(a), str(b))  # KL(a ‖ b) on a's samples: positive
    expected = written - fig5.token_logp(samples, str(b))
    assert kl["n"] == 40 and kl["kl"] == pytest.approx(expected.mean(), abs=0.01) and kl["kl"] > 0


def test_planned_commands_parse_and_finished_stages_are_skipped(fig5, tmp_path, capsys):
    """Every command the plan runs is accepted by the command line's parser (no typo can wait 7 hours to fail);
    a stage whose output exists prints as done; --dry-run runs nothing."""
    from crystalformer_rl.commands import parse_args

    work = tmp_path / "w"
    fig5.main(["--work", str(work), "--max_steps", "60", "--relax_screen", "1.0", "--dry-run", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "--max_steps 60" in printed and "rl_ehull_sun_near_hull_rloo.yaml" in printed and not work.exists()
    args = argparse.Namespace(
        work=work,
        model=None,
        num_samples=2000,
        sample_seed=0,
        eval_seed=1000,
        relax_n=1000,
        relax_n_other=500,
        relax_screen=1.0,
        max_steps=60,
        sft_args="",
        dpo_args="--learning_rate 3e-4",
        rl_args="",
    )
    steps = fig5.plan(args)
    assert list(steps) == [s for s in fig5.STAGES if s != "report"]
    for stage, commands in steps.items():
        for command, _, _ in commands:
            if command is None:
                continue
            assert command[0] == "crystalformer-rl"
            parsed = parse_args(command[1], command[2:])
            if stage in ("rl-sun", "rl-stability"):
                assert parsed[1].max_steps == 60 and parsed[0].resume
            if stage == "dpo":
                assert parsed[1].learning_rate == 3e-4
            if stage == "sft":
                assert parsed[1].learning_rate == 1e-5 and parsed[1].num_train_epochs == 55
                assert parsed[0].data == str(work / "sft-data" / "sft_data.csv")
    relaxed = steps["eval-base"][2][0]
    assert relaxed[relaxed.index("--limit") + 1] == "1000" and "--resume" in relaxed
    assert steps["eval-sft"][2][0][steps["eval-sft"][2][0].index("--limit") + 1] == "500"
    assert steps["eval-sft"][0][0][steps["eval-sft"][0][0].index("--model") + 1] == str(work / "sft")

    (work / "base" / "samples").mkdir(parents=True)
    (work / "base" / "samples" / "samples.csv.meta.json").write_text("{}")
    fig5.main(["--work", str(work), "--stages", "base", "--dry-run"])
    assert "# base: done" in capsys.readouterr().out


def test_sft_data_and_one_sft_step_on_them(fig5, work, crystals, tmp_path):
    """The stable relaxed crystals of a relaxed evaluation become the SFT table, and `sft --data` fine-tunes a model
    on exactly those (`crystalformer-rl sft --data`, which never samples or relaxes)."""
    work, base = work
    rows = fig5.write_sft_data(work / "eval" / "base" / "relaxed", tmp_path / "sft_data.csv")
    assert rows["name"].tolist() == ["sample-000000", "sample-000001", "sample-000006", "sample-000007"]
    assert (rows["e_hull"] == 0.05).all()
    relaxed = Structure.from_str(rows["cif"].iloc[0], fmt="cif")  # the relaxed cell, not the sampled one
    assert relaxed.volume == pytest.approx(0.99 * crystals[0]["structure"].volume, rel=1e-4)
    out = tmp_path / "sft"
    command = ["crystalformer-rl", "sft", "--data", str(tmp_path / "sft_data.csv")]
    command += ["--model", base, "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "2"]
    command += ["--use_cpu", "--report_to", "none", "--save_strategy", "no"]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    selection = json.loads((out / "sft_selection.json").read_text())
    assert selection["read"] == 4 and selection["kept"] == 4
    trained_on = [Structure.from_str(c, fmt="cif") for c in pd.read_parquet(out / "sft_data.parquet")["cif"]]
    given = [Structure.from_str(c, fmt="cif") for c in rows["cif"]]
    assert [s.volume for s in trained_on] == pytest.approx([s.volume for s in given], rel=1e-6)
    assert json.loads((out / "log_history.json").read_text())[-1]["step"] == 1
    assert json.loads((out / "space_group_distribution.json").read_text()) == {str(k): v for k, v in PRIOR.items()}


def test_compute_is_recorded_per_stage_and_summed_over_runs(fig5, tmp_path):
    path = tmp_path / "compute.json"
    burn = [sys.executable, "-c", "sum(i * i for i in range(3_000_000))"]
    for _ in range(2):
        with fig5.recorded(path, "sft-data", 2, [" ".join(burn)]):
            subprocess.run(burn, check=True)
    entry = json.loads(path.read_text())["stages"]["sft-data"]
    assert len(entry["runs"]) == 2 and all(r["finished"] and r["threads"] == 2 for r in entry["runs"])
    assert all(r["cpu_s"] > 0.05 for r in entry["runs"])
    assert entry["wall_x_threads_minutes"] == pytest.approx(2 * entry["wall_minutes"], abs=0.02)
