"""``scripts/mcmc_vs_rl.py`` (MCMC against RL on the same target): the mixing diagnostics on inputs with known answers,
the trainer's reward rule, and the MCMC arm on a tiny model in segments (a run continued from its saved state ends
where one uninterrupted run ends), with the RL arm read from a stand-in run folder."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crystalformer_rl.modeling_crystalformer.mcmc_crystalformer import autocorrelation
from tests.helpers.rl_toy import tiny_model


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mcmc_vs_rl.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("mcmc_vs_rl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mcmc_vs_rl"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------- diagnostics
def test_integrated_autocorrelation_time_known_answers(script):
    iat = script.integrated_autocorrelation_time
    assert iat([1.0] + [0.0] * 30) == 1.0  # uncorrelated
    assert iat(0.5 ** np.arange(200)) == pytest.approx(3.0, abs=1e-3)  # AR(1): (1 + φ) / (1 - φ)
    assert iat(0.8 ** np.arange(400)) == pytest.approx(9.0, abs=1e-2)
    assert math.isnan(iat([math.nan]))
    # from traces: 400 AR(1) chains with φ = 0.8 (τ_int = 9), through the package's autocorrelation
    rng = np.random.default_rng(0)
    x = np.zeros((400, 3000))
    noise = rng.standard_normal(x.shape)
    for t in range(1, x.shape[1]):
        x[:, t] = 0.8 * x[:, t - 1] + noise[:, t]
    assert iat(autocorrelation(x[:, 200:], max_lag=100)) == pytest.approx(9.0, rel=0.1)


def test_chemical_systems_known_answers(script):
    A = np.array([[8, 26, 8, 0], [26, 8, 0, 0], [3, 0, 0, 0]])
    assert script.chemical_systems(A) == [(8, 26), (8, 26), (3,)]
    assert script.distinct_systems([A]) == 2
    later = np.array([[8, 26, 0], [11, 17, 0], [3, 0, 0]])  # another width: one new system (Na-Cl)
    assert script.distinct_systems([A, later]) == 3
    assert script.distinct_systems([A], [np.array([False, True, True])]) == 2
    assert script.distinct_systems([A], [np.array([True, True, False])]) == 1
    assert script.distinct_systems([A, later], [None, np.array([False, True, False])]) == 1  # None: not judged


def three_values(prompts, completions, **kwargs):
    return [None, 0.5, -20.0][: len(completions)]


def test_the_reward_is_the_trainers_rule(script):
    target = script.Target("c.yaml", None, ["tests.test_mcmc_vs_rl:three_values"], {}, [2.0], 0.1, (-10, 10), -10, [])

    class Crystal:
        G = 225

    crystals = [Crystal()] * 3
    assert script.TrainerReward(target).score(crystals).tolist() == [-10.0, 1.0, -10.0]  # failure, 2 × 0.5, clipped
    target.failure_reward, target.clip = None, None
    values = script.TrainerReward(target).score(crystals)
    assert math.isnan(values[0]) and values[1:].tolist() == [1.0, -40.0]


# ------------------------------------------------------------------------------------------------------ the arms
@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=3, n_max=6, initializer_range=0.15, num_layers=1).eval()
    with torch.no_grad():  # four likely elements (O, F, Ne, Na), as in tests/test_mcmc.py
        m.head.bias[1 : m.config.atom_types] = -30.0
        m.head.bias[8:12] = torch.tensor([3.5, 2.5, 1.5, 0.5])
    return m


def write_config(folder: Path) -> Path:
    path = folder / "rl.yaml"
    path.write_text(
        "rewards: [tests.helpers.rl_toy:anion_fraction]\nbeta: 0.5\nspace_groups: [2]\n"
        f"output_dir: {folder / 'unused'}\nreward_clip_range: [-10, 10]\nfailure_reward: -1\n"
    )
    return path


def fake_rl_run(folder: Path, model) -> Path:
    """A run folder with one checkpoint (the tiny model) and the log history the trainer writes."""
    checkpoint = folder / "checkpoint-3"
    model.save_pretrained(checkpoint)
    history = [{"step": 1, "step_time": 0.5, "reward": 0.1}, {"step": 3, "step_time": 1.0, "reward": 0.2}]
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return folder


def test_mcmc_arm_in_segments_resumes_and_reports(script, model, tmp_path, capsys):
    config = write_config(tmp_path)
    common = ["--rl_config", str(config), "--num_chains", "6", "--sweeps_per_segment", "1", "--batch_size", "4"]
    common += ["--evaluate_options", "--no_stability --no_novelty", "--burn_in", "0", "--max_lag", "2"]
    split, whole = tmp_path / "split", tmp_path / "whole"
    first = script.main([*common, "--segments", "1", "--output_dir", str(split)], model=model)
    assert len(first["mcmc"]["segments"]) == 2 and "rl_command" in first
    assert "crystalformer-rl rl --config" in capsys.readouterr().out  # the command that would train the RL arm
    run = fake_rl_run(tmp_path / "rl", model)
    report = script.main(
        [*common, "--segments", "2", "--output_dir", str(split), "--rl_run", str(run), "--rl_threads", "2"],
        model=model,
    )
    script.main([*common, "--segments", "2", "--output_dir", str(whole)], model=model)

    # resumed: the first segment is kept, the second continues from the saved states, as one uninterrupted run
    segments = report["mcmc"]["segments"]
    assert [s["segment"] for s in segments] == [0, 1, 2] and [s["sweeps"] for s in segments] == [0, 1, 2]
    assert segments[1]["cpu_seconds"] == first["mcmc"]["segments"][1]["cpu_seconds"]
    assert segments[2]["cpu_seconds"] > segments[1]["cpu_seconds"] > 0
    a = torch.load(split / "mcmc" / "state.pt", weights_only=False)
    b = torch.load(whole / "mcmc" / "state.pt", weights_only=False)
    for key in ("A", "XYZ", "L"):
        assert torch.equal(a["chains"][key], b["chains"][key]), key
    assert np.array_equal(a["reward_trace"], b["reward_trace"]) and a["reward_trace"].shape == (6, 3)
    assert (split / "mcmc" / "segment-002" / "samples.csv").is_file()

    # diagnostics and evaluation
    mcmc = report["mcmc"]
    assert len(mcmc["acceptance_per_sweep"]) == 2 and len(mcmc["reward_mean_per_sweep"]) == 3
    assert segments[0]["reward_mean"] == pytest.approx(float(np.mean(a["reward_trace"][:, 0])))
    assert len(mcmc["reward_autocorrelation"]) == 2  # lags 0 and 1: two sweeps after a burn-in of 0
    assert mcmc["reward_integrated_autocorrelation_time"] is None  # too few sweeps for an estimate
    assert mcmc["distinct_systems_visited"] >= segments[0]["distinct_systems"] >= 1
    assert segments[2]["frac_valid"] is not None and segments[2]["frac_sun_unrelaxed"] is None  # no stability here

    # the RL arm: the base model and the checkpoint, CPU = logged training (0.5 + 2 × 1.0 s, × 2 threads) + sampling
    points = report["rl"]["points"]
    assert [p["step"] for p in points] == [0, 3]
    assert points[0]["training_cpu_seconds"] == 0 and points[1]["training_cpu_seconds"] == pytest.approx(5.0)
    assert not points[1]["training_cpu_measured"]  # this log has no cpu_s: wall step_time × --rl_threads
    history = [{"step": 1, "step_time": 0.5, "cpu_s": 0.7}, {"step": 3, "step_time": 1.0, "cpu_s": 2.9}]
    assert script.training_cpu_seconds(history, 3) == 2.9 and script.training_cpu_seconds(history, 2) == 0.7
    assert points[1]["cpu_seconds"] == pytest.approx(5.0 + points[1]["sampling_cpu_seconds"])
    assert points[1]["training_reward_logged"] == 0.2 and points[1]["frac_valid"] is not None
    saved = json.loads((split / "mcmc_vs_rl.json").read_text())
    assert saved["target"]["tau"] == 0.5 and saved["target"]["failure_reward"] == -1.0
    assert (split / "mcmc_vs_rl.png").stat().st_size > 10_000

    # a mistyped RL run is an error, not a silently missing arm
    with pytest.raises(SystemExit, match="not a folder"):
        script.main([*common, "--segments", "2", "--output_dir", str(split), "--rl_run", str(tmp_path / "nope")])
    # RL samples drawn with other settings are refused, not reused with their old evaluation
    arm = split / "rl" / "step-000003" / "arm.json"
    arm.write_text(json.dumps({**json.loads(arm.read_text()), "drawn_with": {"seed": 7}}))
    rerun = [*common, "--segments", "2", "--output_dir", str(split), "--rl_run", str(run), "--rl_threads", "2"]
    with pytest.raises(SystemExit, match="drawn with"):
        script.main(rerun, model=model)
    # --overwrite starts anew: chains, segment evaluations and the RL arm's samples all go
    script.main([*common, "--segments", "1", "--output_dir", str(split), "--overwrite"], model=model)
    assert not (split / "rl").exists() and not (split / "mcmc" / "segment-002").exists()

    # other settings in the same folder are refused
    with pytest.raises(SystemExit, match="num_chains"):
        script.main([*common[:3], "5", *common[4:], "--segments", "2", "--output_dir", str(split)], model=model)
