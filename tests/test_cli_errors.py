"""Command-line errors: one line naming the input and the fix, exit status 2, no traceback (``--debug`` keeps it).

Every case runs ``crystalformer_rl.commands.main`` in-process and fails before any model runs, so each takes seconds.
The tests run offline (``tests/conftest.py`` sets ``HF_HUB_OFFLINE=1``).
"""

import pandas as pd
import pytest

from crystalformer_rl.commands import main, parse_args
from crystalformer_rl.pretrained import ModelNotFoundError


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def assert_one_line(code: int, lines: list[str], *fragments: str) -> str:
    assert code == 2, lines
    assert len(lines) == 1, lines  # no traceback, no usage block
    assert "Traceback" not in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------------- sample
def test_sample_space_group_out_of_range(capsys, tmp_path):
    code, lines = run_cli(["sample", "-g", "231", "-o", str(tmp_path)], capsys)
    assert_one_line(code, lines, "crystalformer-rl sample: error:", "--space_group", "231", "1..230")


def test_sample_zero_samples(capsys, tmp_path):
    code, lines = run_cli(["sample", "-n", "0", "-o", str(tmp_path)], capsys)
    assert_one_line(code, lines, "--num_samples", "0", "at least 1")


def test_sample_unknown_element(capsys, tmp_path):
    code, lines = run_cli(["sample", "-e", "La", "Xx", "-o", str(tmp_path)], capsys)
    assert_one_line(code, lines, "--elements", "'Xx'", "element symbol")


def test_sample_model_path_that_does_not_exist(capsys, tmp_path):
    code, lines = run_cli(["sample", "--model", "/nonexistent", "-n", "2", "-o", str(tmp_path)], capsys)
    line = assert_one_line(code, lines, "model /nonexistent", "no such folder or file", "Hub id (user/model)")
    assert "alphanumeric" not in line  # not the Hub's repo-id validation message
    assert not (tmp_path / "samples.csv").exists()


def test_sample_unknown_hub_id_offline(capsys, tmp_path):
    code, lines = run_cli(["sample", "--model", "nobody/no-such-model", "-n", "2", "-o", str(tmp_path)], capsys)
    assert_one_line(code, lines, "model nobody/no-such-model", "offline (HF_HUB_OFFLINE=1)", "local cache")


def test_debug_keeps_the_traceback(capsys, tmp_path):
    with pytest.raises(ModelNotFoundError, match="/nonexistent"):
        main(["--debug", "sample", "--model", "/nonexistent", "-o", str(tmp_path)])
    with pytest.raises(ModelNotFoundError):
        main(["sample", "--model", "/nonexistent", "-o", str(tmp_path), "--debug"])


def test_sample_zero_rows_api_keeps_the_columns(tiny_folder):
    """``-n 0`` used to die with KeyError 'tokens' when writing: an empty draw still has the columns."""
    import numpy as np

    from crystalformer_rl.pretrained import load_model
    from crystalformer_rl.sampling import sample_to_frame

    frame, _ = sample_to_frame(load_model(tiny_folder), np.zeros(0, dtype=np.int64), progress=False)
    assert len(frame) == 0 and "tokens" in frame.columns


# --------------------------------------------------------------------------------------------- evaluate
def test_evaluate_missing_input(capsys, tmp_path):
    missing = tmp_path / "no-such-samples.csv"
    code, lines = run_cli(["evaluate", str(missing), "-o", str(tmp_path / "eval")], capsys)
    assert_one_line(code, lines, "crystalformer-rl evaluate: error:", str(missing), "no such file", "sample")
    assert not (tmp_path / "eval").exists()


def test_evaluate_unknown_reference_hub_id_offline(capsys, tmp_path):
    samples = tmp_path / "samples.csv"
    pd.DataFrame({"tokens": ["225-a-Na-0-0-0-b-Cl-1/2-1/2-1/2-5.64-5.64-5.64-90-90-90"]}).to_csv(samples)
    argv = ["evaluate", str(samples), "--reference", "nobody/no-such-dataset", "--no_stability", "--no_progress"]
    code, lines = run_cli([*argv, "-o", str(tmp_path / "eval")], capsys)
    assert_one_line(code, lines, "reference nobody/no-such-dataset", "offline")
    # with -o under tmp_path too: before, this call wrote nothing but named the default folder, evaluation/, in the
    # working directory (issue 36: an evaluation/ folder appeared at the repo root after a test run)
    code, lines = run_cli(
        [*argv[:3], str(tmp_path / "missing.parquet"), *argv[4:], "-o", str(tmp_path / "e2")], capsys
    )
    assert_one_line(code, lines, "missing.parquet", "no such file or folder")


# --------------------------------------------------------------------------------------------- pretrain
def test_pretrain_default_validation_data_missing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/corpus/validation.parquet here
    train = tmp_path / "my_prepared.parquet"
    pd.DataFrame({"G": [225]}).to_parquet(train)
    argv = ["pretrain", "--train_data", str(train), "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]
    code, lines = run_cli(argv, capsys)
    assert_one_line(
        code, lines, "--validation_data data/corpus/validation.parquet", "(the default)", "--validation_data none"
    )
    code, lines = run_cli(["pretrain", "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"], capsys)
    assert_one_line(code, lines, "--train_data data/corpus/train.parquet", "scripts/build_corpus.py")


def test_pretrain_unknown_option_is_one_line(capsys, tmp_path):
    code, lines = run_cli(["pretrain", "--no_such_option", "1", "--output_dir", str(tmp_path)], capsys)
    assert_one_line(code, lines, "crystalformer-rl pretrain: error:", "--no_such_option")


# -------------------------------------------------------------------------------------------------- sft
def test_sft_data_missing_or_without_crystals(capsys, tmp_path):
    out = tmp_path / "out"
    code, lines = run_cli(["sft", "--data", str(tmp_path / "nope.csv"), "--output_dir", str(out)], capsys)
    assert_one_line(code, lines, f"--data {tmp_path / 'nope.csv'}", "no such file")
    assert not out.exists()
    table = tmp_path / "broken.csv"
    pd.DataFrame({"cif": ["not a cif", "data_x\n_cell_length_a 3"]}).to_csv(table, index=False)
    code, lines = run_cli(["sft", "--data", str(table), "--output_dir", str(out), "--use_cpu", "true"], capsys)
    lines = [line for line in lines if not line.startswith("Loading weights")]  # the model loaded first
    assert_one_line(code, lines, f"--data {table}", "none of its 2 crystals could be built and tokenized")


# ----------------------------------------------------------------------------------------------- rl resume
class _Stop(Exception):
    pass


def test_rl_accepts_resume_from_checkpoint(tiny_folder, tmp_path, monkeypatch):
    """``rl --resume_from_checkpoint`` reaches ``Trainer.train`` (it was ignored: only ``--resume`` worked)."""
    import crystalformer_rl.trainers.crystal_rloo_trainer as rloo
    from crystalformer_rl.commands.train import run_rl

    seen = {}

    class FakeTrainer:
        def __init__(self, model, rewards, args=None, train_dataset=None):
            pass

        def add_callback(self, callback):  # the command adds the checkpoint-files callback before training
            pass

        def train(self, resume_from_checkpoint=None):
            seen["checkpoint"] = resume_from_checkpoint
            raise _Stop

    monkeypatch.setattr(rloo, "CrystalRLOOTrainer", FakeTrainer)
    out = tmp_path / "rl"
    for step in (3, 6):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    common = [
        "--model",
        str(tiny_folder),
        "--rewards",
        "tests.helpers.rl_toy:anion_fraction",
        "--prompts",
        "225,14",
        "--output_dir",
        str(out),
        "--use_cpu",
        "true",
    ]
    for extra, expected in (
        (["--resume_from_checkpoint", str(out / "checkpoint-3")], str(out / "checkpoint-3")),
        (["--resume_from_checkpoint", "last"], str(out / "checkpoint-6")),
        (["--resume", "true"], str(out / "checkpoint-6")),
        (["--overwrite_output_dir"], None),  # without it or a resume, the used folder is refused (issue 36)
    ):
        seen.clear()
        with pytest.raises(_Stop):
            run_rl(*parse_args("rl", [*common, *extra]))
        assert seen["checkpoint"] == expected, extra


def test_rl_resume_from_missing_checkpoint(capsys, tiny_folder, tmp_path):
    argv = ["rl", "--model", str(tiny_folder), "--output_dir", str(tmp_path / "rl"), "--use_cpu", "true"]
    code, lines = run_cli([*argv, "--resume_from_checkpoint", str(tmp_path / "checkpoint-9")], capsys)
    assert_one_line(code, lines, "--resume_from_checkpoint", "checkpoint-9", "no such checkpoint folder")
    code, lines = run_cli([*argv, "--reward_kwargs", "{not json"], capsys)
    assert_one_line(code, lines, "--reward_kwargs", "JSON")


def test_unknown_command_is_one_line(capsys):
    code, lines = run_cli(["smaple"], capsys)
    assert_one_line(code, lines, "invalid choice", "smaple")


def test_rl_reward_clip_range_from_the_command_line(capsys, tiny_folder, tmp_path):
    """``--reward_clip_range=-1,0`` is the pair (-1, 0); HfArgumentParser used to make ``[-1,0]`` a tuple of its six
    characters, which only failed at the first batch. A bad range is one line naming the option."""

    for given, expected in (("-1,0", (-1.0, 0.0)), ("[-3, 0]", (-3.0, 0.0)), ("none", None)):
        _, config = parse_args("rl", [f"--reward_clip_range={given}", "--output_dir", str(tmp_path)])
        assert config.reward_clip_range == expected, given
    argv = ["rl", "--model", str(tiny_folder), "--output_dir", str(tmp_path / "rl"), "--use_cpu", "true"]
    code, lines = run_cli([*argv, "--reward_clip_range=0,-1"], capsys)
    assert_one_line(code, lines, "--reward_clip_range '0,-1'", "MIN <= MAX")
    code, lines = run_cli([*argv, "--reward_clip_range=low,high"], capsys)
    assert_one_line(code, lines, "--reward_clip_range 'low,high'", "two numbers MIN,MAX")
