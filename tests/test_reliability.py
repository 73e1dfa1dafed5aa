"""Issue 36, the command line: one error path (one line on stderr naming the input and the reason, exit status 2;
Ctrl-C one line and 130; `--debug` keeps the traceback), numeric options checked at parse time, YAML scalars."""

import json
import re
import shutil

import pytest
import yaml

from crystalformer_rl.commands import main, parse_args
from tests.helpers.rl_toy import tiny_model


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    """The exit status and the stderr lines, progress bars aside (tqdm's, as the datasets library draws them)."""
    code = main(argv)
    err = capsys.readouterr().err.replace("\r", "\n")
    return code, [line for line in err.splitlines() if line.strip() and not re.search(r"\[\d+:\d\d[,<]", line)]


def assert_one_line(code, lines, *fragments):
    assert code == 2, lines
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model().save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------- bad model folders
def _broken_folders(tiny_folder, tmp_path):
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny_folder / "config.json", no_weights)
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_folder, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_folder, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["hidden_size"] = 2 * config["hidden_size"]
    (mismatched / "config.json").write_text(json.dumps(config))
    malformed = tmp_path / "malformed"
    shutil.copytree(tiny_folder, malformed)
    (malformed / "config.json").write_text("{not json")
    random_pickle = tmp_path / "random.pkl"
    random_pickle.write_bytes(bytes(range(256)) * 4)
    return [no_weights, truncated, mismatched, malformed, random_pickle]


def test_a_bad_model_is_one_line_naming_it(capsys, tiny_folder, tmp_path):
    for folder in _broken_folders(tiny_folder, tmp_path):
        code, lines = run_cli(["sample", "--model", str(folder), "-n", "2", "-o", str(tmp_path / "s")], capsys)
        assert_one_line(code, lines, f"--model {folder}")
    assert not (tmp_path / "s").exists()


def test_debug_keeps_the_traceback(tiny_folder, tmp_path):
    """With --debug the library's own exception propagates, not the one-line error made from it."""
    folder = _broken_folders(tiny_folder, tmp_path)[0]
    with pytest.raises(OSError, match="model.safetensors"):
        main(["--debug", "sample", "--model", str(folder), "-n", "2", "-o", str(tmp_path / "s")])


def test_convert_failures_are_one_line(capsys, tmp_path):
    """A random file and a refused (malicious) pickle: one line naming the checkpoint."""
    random_pickle = tmp_path / "random.pkl"
    random_pickle.write_bytes(bytes(range(256)) * 4)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import pickle

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"params": Evil()}))
    for path in (random_pickle, evil, tmp_path / "missing.pkl"):
        code, lines = run_cli(["convert", str(path), str(tmp_path / "out")], capsys)
        assert_one_line(code, lines, str(path))
        assert "pwned" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- sample options
def test_sample_wyckoff_letters_need_their_space_group(capsys):
    code, lines = run_cli(["sample", "-w", "a", "b"], capsys)
    assert_one_line(code, lines, "--wyckoff", "--space_group")
    assert "29" not in lines[0]  # before: it named a space group the user never asked for
    code, lines = run_cli(["sample", "-g", "225", "-w", "z"], capsys)
    assert_one_line(code, lines, "--wyckoff", "z", "225", "a..l")


def test_yaml_scalars_and_syntax_errors(capsys, tmp_path):
    path = tmp_path / "sample.yaml"
    path.write_text(yaml.safe_dump({"space_group": 225, "elements": "La"}))
    (args,) = parse_args("sample", ["--config", str(path)])
    assert args.space_group == [225] and args.elements == ["La"]
    path.write_text("space_group: 0\n")
    code, lines = run_cli(["sample", "--config", str(path)], capsys)
    assert_one_line(code, lines, "--space_group", "0 is not a space group")
    path.write_text("space_group: [225\n")
    code, lines = run_cli(["sample", "--config", str(path)], capsys)
    assert_one_line(code, lines, f"--config {path}", "not valid YAML", "line")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["evaluate", "in.csv", "--batch_size", "0"], "--batch_size: 0: use at least 1"),
        (["evaluate", "in.csv", "--limit", "-1"], "--limit: -1: use at least 1"),
        (["evaluate", "in.csv", "--symprec", "-1"], "--symprec: -1.0: use a number > 0"),
        (["evaluate", "in.csv", "--fmax", "0"], "--fmax: 0.0: use a number > 0"),
        (["sample", "--batch_size", "0"], "--batch_size: 0: use at least 1"),
        (["prepare-data", "a.csv", "out", "--shard_size", "0"], "--shard_size: 0: use at least 1"),
        (["prepare-data", "a.csv", "out", "--limit", "-1"], "--limit: -1: use at least 1"),
        (["prepare-data", "a.csv", "out", "--num_proc", "0"], "--num_proc: 0: use at least 1"),
        (["convert", "x.pkl", "out", "--num_heads", "0"], "--num_heads: 0: use at least 1"),
    ],
)
def test_numeric_options_are_checked_at_parse_time(capsys, argv, fragment):
    code, lines = run_cli(argv, capsys)
    assert_one_line(code, lines, fragment)


# ------------------------------------------------------------------------------------------------ evaluate inputs
def test_evaluate_bad_inputs_are_one_line(capsys, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("cif\n")
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("a,b\n1,2\n")
    corrupt = {suffix: tmp_path / f"corrupt.{suffix}" for suffix in ("parquet", "json", "extxyz")}
    for path in corrupt.values():
        path.write_text("{not what it says")
    flags = ["-o", str(tmp_path / "eval"), "--no_stability", "--no_novelty", "--no_progress"]
    for path, fragment in [
        (empty, "no crystals"),
        (no_column, "no crystal column"),
        *((path, str(path)) for path in corrupt.values()),
    ]:
        code, lines = run_cli(["evaluate", str(path), *flags], capsys)
        assert_one_line(code, lines, f"input {path}", fragment)
    code, lines = run_cli(["evaluate", str(no_column), "--column", "nonexistent", *flags], capsys)
    assert_one_line(code, lines, "--column nonexistent")


# ----------------------------------------------------------------------------------------------------- trainers
def test_rl_bad_rewards_and_learning_rate_fail_before_any_work(capsys, tiny_folder, tmp_path):
    base = ["rl", "--model", str(tiny_folder), "--use_cpu", "true"]
    for rewards, fragment in (("ehul", "unknown reward"), ("no_such_module_xyz:f", "No module named")):
        out = tmp_path / rewards.replace(":", "_")
        code, lines = run_cli([*base, "--rewards", rewards, "--output_dir", str(out)], capsys)
        assert_one_line(code, lines, f"--rewards {rewards}", fragment)
        assert not out.exists()
    out = tmp_path / "lr"
    code, lines = run_cli([*base, "--learning_rate", "-1", "--output_dir", str(out)], capsys)
    assert_one_line(code, lines, "--learning_rate: -1.0")
    assert not out.exists()  # before: an empty folder was left behind


# -------------------------------------------------------------------------------------------------- prepare-data
def test_prepare_data_empty_table_and_misspelt_path(capsys, tmp_path, monkeypatch):
    empty = tmp_path / "empty.csv"
    empty.write_text("cif\n")
    code, lines = run_cli(["prepare-data", str(empty), str(tmp_path / "p1"), "--num_proc", "1"], capsys)
    assert_one_line(code, lines, f"source {empty}")
    monkeypatch.chdir(tmp_path)
    code, lines = run_cli(["prepare-data", "dta/train.csv", "p2", "--num_proc", "1"], capsys)
    assert_one_line(code, lines, "source dta/train.csv", "no such file")
    assert "Hub" not in lines[0].split(";")[0] and "Couldn't reach" not in lines[0]


# ----------------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_is_one_line_and_status_130(capsys, monkeypatch):
    import crystalformer_rl.commands.sample as sample

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "run_sample", interrupted)
    code = main(["sample", "-n", "2"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 130 and len(lines) == 1 and "interrupted" in lines[0]


def test_an_unexpected_error_is_one_line_pointing_at_debug(capsys, monkeypatch):
    import crystalformer_rl.commands.sample as sample

    def bug(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(sample, "run_sample", bug)
    code = main(["sample", "-n", "2"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "ZeroDivisionError" in lines[0] and "--debug" in lines[0]
