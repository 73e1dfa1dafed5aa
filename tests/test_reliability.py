"""Issue 36, the command line: one error path (one line on stderr naming the input and the reason, exit status 2;
Ctrl-C one line and 130; `--debug` keeps the traceback), numeric options checked at parse time, YAML scalars."""

import json
import re
import shutil

import numpy as np
import pytest
import yaml
from pymatgen.core import Lattice, Structure

from crystalformer_rl.commands import main, parse_args


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


# ================================================================================ issue 36, the rest: nothing lost
NACL = "225-a-Na-0-0-0-b-Cl-1/2-1/2-1/2-5.64-5.64-5.64-90-90-90"


def _nacl_cif(**changes) -> str:
    """NaCl (rock salt, primitive-free conventional cell) as CIF text, with a site or the cell changed."""
    from pymatgen.core import Lattice, Structure

    a = changes.get("a", 5.64)
    structure = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    if changes.get("close"):  # an extra Na 0.004 Å from the first one
        structure.append("Na", [0.004 / a, 0, 0])
    if changes.get("partial"):  # a half-occupied Na site
        structure.replace(0, {"Na": 0.5})
    return structure.to(fmt="cif")


def _cifs(folder):
    return sorted(p.name for p in (folder / "cifs").glob("*.cif"))


def _sample(tiny_folder, out, *extra):
    return ["sample", "--model", str(tiny_folder), "-g", "225", "-o", str(out), "--batch_size", "2", *extra]


# --------------------------------------------------------------------------------------- 1. used output folders
def test_sample_into_a_used_folder_is_refused_and_overwrite_leaves_only_the_new_run(capsys, tiny_folder, tmp_path):
    """Issue 36 case 4: `sample -n 20 -o h; sample -n 5 -o h --seed 2` left 15 stale CIFs beside the 5 new ones."""
    out = tmp_path / "h"
    assert main(_sample(tiny_folder, out, "-n", "6")) == 0
    before = (out / "samples.csv").read_bytes()
    code, lines = run_cli(_sample(tiny_folder, out, "-n", "3", "--seed", "2"), capsys)
    assert_one_line(code, lines, f"--output_dir {out}", "earlier run", "--overwrite")
    assert (out / "samples.csv").read_bytes() == before
    assert main(_sample(tiny_folder, out, "-n", "3", "--seed", "2", "--overwrite")) == 0
    import pandas as pd

    table = pd.read_csv(out / "samples.csv")
    assert len(table) == 3 and json.loads((out / "sampling.json").read_text())["num_samples"] == 3
    assert _cifs(out) == sorted(f"{i}.cif" for i in table[table.valid_tokens].id)


@pytest.mark.parametrize("command", ["sample", "evaluate", "prepare-data", "rl"])
def test_an_output_folder_that_is_a_file_or_unwritable_is_refused_before_any_work(capsys, tmp_path, command):
    """Issue 36 case 5: an unwritable output folder, or an -o naming a file, failed only after all the work."""
    samples = tmp_path / "samples.csv"
    samples.write_text(f"tokens\n{NACL}\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "below", "/proc/no-such-folder/out"):
        argv = {
            "sample": ["sample", "-n", "2", "-o", str(out)],
            "evaluate": ["evaluate", str(samples), "-o", str(out), "--no_progress"],
            "prepare-data": ["prepare-data", str(samples), str(out), "--num_proc", "1"],
            "rl": ["rl", "--output_dir", str(out), "--use_cpu", "true", "--max_steps", "3"],
        }[command]
        code, lines = run_cli(argv, capsys)
        assert_one_line(code, lines, str(out))
        assert "not writable" in lines[0] or "file" in lines[0], lines[0]


def _rl(tiny_folder, out, *extra):
    return [
        "rl", "--model", str(tiny_folder), "--rewards", "tests.helpers.rl_toy:anion_fraction",
        "--output_dir", str(out), "--per_device_train_batch_size", "8", "--num_generations", "2",
        "--max_steps", "3", "--save_steps", "3", "--use_cpu", "true", "--disable_tqdm", "true",
        "--report_to", "none", *extra,
    ]  # fmt: skip


def test_rl_rerun_into_a_used_folder_is_refused_and_a_finished_run_resumed_is_a_no_op(capsys, tiny_folder, tmp_path):
    """Issue 36 cases 1 and 2: re-running `rl` into a run folder replaced the trained model; resuming a finished run
    trained a step past --max_steps and replaced the final model."""
    out = tmp_path / "rl"
    assert main(_rl(tiny_folder, out)) == 0
    capsys.readouterr()
    model = (out / "model.safetensors").read_bytes()
    code, lines = run_cli(_rl(tiny_folder, out), capsys)
    assert_one_line(code, lines, f"--output_dir {out}", "--overwrite_output_dir", "--resume_from_checkpoint")
    assert (out / "model.safetensors").read_bytes() == model
    code = main(_rl(tiny_folder, out, "--resume_from_checkpoint", "last"))
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "already" in line]
    assert code == 0 and len(notes) == 1 and "max_steps 3" in notes[0], captured.err
    assert (out / "model.safetensors").read_bytes() == model
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    # --overwrite_output_dir starts afresh: the old checkpoints go, so `last` can never mean the earlier run's
    (out / "checkpoint-3" / "marker").write_text("old run")
    assert main(_rl(tiny_folder, out, "--overwrite_output_dir", "--seed", "7")) == 0
    assert not (out / "checkpoint-3" / "marker").exists()


def test_rl_save_steps_are_aligned_to_the_sampling_cycle_with_a_note(caplog):
    """Issue 36 case 11: `rl --max_steps 60 --save_steps 1000 --num_iterations 3` was refused."""
    import logging

    with caplog.at_level(logging.WARNING):
        _, config = parse_args("rl", ["--max_steps", "60", "--save_steps", "1000", "--num_iterations", "3"])
    assert config.save_steps % 3 == 0 and abs(config.save_steps - 1000) < 3
    notes = [r.getMessage() for r in caplog.records if "save_steps" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and str(int(config.save_steps)) in notes[0]
    with pytest.raises(ValueError, match="max_steps=61"):  # the final checkpoint must still resume exactly
        parse_args("rl", ["--max_steps", "61", "--save_steps", "3", "--num_iterations", "3"])


# ------------------------------------------------------------------------------------ 3. writing as they go
def test_sample_ctrl_c_keeps_the_finished_batches(capsys, tiny_folder, tmp_path, monkeypatch):
    """Issue 36 case 5: Ctrl-C during a long `sample` printed a traceback and wrote nothing."""
    import crystalformer_rl.sampling as sampling

    add, calls = sampling.SampleWriter.add, []

    def add_then_interrupt(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        add(self, *args)

    monkeypatch.setattr(sampling.SampleWriter, "add", add_then_interrupt)
    out = tmp_path / "s"
    code, lines = run_cli(_sample(tiny_folder, out, "-n", "10"), capsys)
    assert code == 130 and len(lines) == 1 and "interrupted after 4 of 10" in lines[0], lines
    import pandas as pd

    assert len(pd.read_csv(out / "samples.csv")) == 4
    meta = json.loads((out / "sampling.json").read_text())
    assert meta["interrupted"] and meta["num_samples"] == 4


def test_sample_ctrl_c_inside_a_batch_leaves_no_file_of_it(capsys, tiny_folder, tmp_path, monkeypatch):
    """Ctrl-C while a batch was being written left its CIFs (and part of samples.extxyz) past the table's last
    row; now the unfinished batch is taken back, so every file holds exactly the table's crystals."""
    import ase.io
    import pandas as pd

    calls = []
    to_csv = pd.DataFrame.to_csv

    def interrupt_the_third_table_write(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third batch's CIFs and extxyz frames are written by now
            raise KeyboardInterrupt
        return to_csv(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupt_the_third_table_write)
    out = tmp_path / "s"
    code, lines = run_cli(_sample(tiny_folder, out, "-n", "10", "--format", "csv", "cif", "extxyz"), capsys)
    assert code == 130 and "interrupted after 4 of 10" in lines[0], lines
    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    table = pd.read_csv(out / "samples.csv")
    assert len(table) == 4
    written = sorted(p.stem for p in (out / "cifs").glob("*.cif"))
    assert written == sorted(table.loc[table["valid_tokens"], "id"])
    frames = ase.io.read(out / "samples.extxyz", index=":")
    assert [a.info["id"] for a in frames] == table.loc[table["valid_tokens"], "id"].tolist()


def test_an_interrupted_atomic_write_leaves_neither_the_file_nor_its_temporary(tmp_path):
    from crystalformer_rl.utils import atomic_write_with

    def half_then_ctrl_c(tmp):
        tmp.write_text("half a CIF")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(half_then_ctrl_c, tmp_path / "cifs" / "sample-000001.cif")
    assert list((tmp_path / "cifs").iterdir()) == []


def test_sample_refuses_a_batch_that_would_not_fit_in_memory(capsys, tmp_path, monkeypatch):
    """Issue 36 case 6: `sample -n 200000 --batch_size 200000` took 6 GB before the first progress tick."""
    import crystalformer_rl.commands.sample as sample

    monkeypatch.setattr(sample, "available_memory", lambda device: 4 * 2**30)
    out = tmp_path / "big"
    code, lines = run_cli(["sample", "-n", "200000", "--batch_size", "200000", "-o", str(out)], capsys)
    assert_one_line(code, lines, "--batch_size 200000", "GiB")
    assert not out.exists()


def test_sample_reads_the_space_group_distribution_only_without_groups(tiny_folder, tmp_path, monkeypatch):
    import crystalformer_rl.commands.sample as sample

    def unwanted(model):
        raise AssertionError("the distribution is not needed with -g")

    monkeypatch.setattr(sample, "space_group_distribution", unwanted)
    assert main(["--debug", *_sample(tiny_folder, tmp_path / "g", "-n", "2")]) == 0


def _evaluate(inp, out, *extra):
    return ["evaluate", str(inp), "-o", str(out), "--no_stability", "--no_novelty", "--no_progress", *extra]


def test_evaluate_never_leaves_stale_outputs_beside_a_new_table(capsys, tmp_path):
    """Issue 36 case 4: `evaluate` over an older result left a stale parquet file and stale plots."""
    samples = tmp_path / "samples.csv"
    samples.write_text(f"tokens\n{NACL}\n{NACL}\n")
    out = tmp_path / "eval"
    assert main(_evaluate(samples, out, "--format", "both")) == 0
    assert (out / "structures.parquet").exists() and list(out.glob("*.png"))
    code, lines = run_cli(_evaluate(samples, out, "--format", "csv", "--no_plots"), capsys)
    assert_one_line(code, lines, f"--output_dir {out}", "earlier run", "--overwrite")
    assert main(_evaluate(samples, out, "--format", "csv", "--no_plots", "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["space_groups.csv", "structures.csv", "summary.json"]


# Seven rock salts: unrelaxed E_hull by formula; the stand-in relaxation shrinks the cell to 5 Å, which lowers
# E_hull by 0.5 eV/atom (so NaBr, 0.55 as sampled, ends stable).
SALT_EHULL = {"NaCl": 0.05, "KCl": 0.3, "NaBr": 0.55, "KBr": 1.2, "LiF": 2.5, "NaF": 0.45, "LiCl": 3.0}


def _salts(tmp_path):
    import pandas as pd
    from pymatgen.core import Lattice, Structure

    cifs = []
    for formula in SALT_EHULL:
        cation, anion = re.findall(r"[A-Z][a-z]?", formula)
        salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), [cation, anion], [[0, 0, 0], [0.5] * 3])
        cifs.append(salt.to(fmt="cif"))
    path = tmp_path / "salts.csv"
    pd.DataFrame({"id": list(SALT_EHULL), "cif": cifs}).to_csv(path, index=False)
    return path


@pytest.fixture
def stand_in_potential(monkeypatch):
    """evaluate's potential replaced: E_hull from SALT_EHULL (0.5 lower for a relaxed 5 Å cell); the relaxation
    records the crystals it is given (``seen``) and raises KeyboardInterrupt at call ``interrupt_at``."""
    import crystalformer_rl.evaluation.evaluate as ev
    from crystalformer_rl.materials import RelaxResult

    state = {"seen": [], "interrupt_at": None}

    def ehull_fn(structures):
        relaxed = [abs(s.lattice.a - 5.0) < 1e-6 for s in structures]
        return [SALT_EHULL[s.composition.reduced_formula] - 0.5 * r for s, r in zip(structures, relaxed)]

    def relax_fn(structures):
        state["seen"].extend(s.composition.reduced_formula for s in structures)
        if len(state["seen"]) == state["interrupt_at"]:
            raise KeyboardInterrupt
        out = []
        for s in structures:
            relaxed = s.copy()
            relaxed.scale_lattice(125.0)
            out.append(RelaxResult(relaxed, -1.0 * len(s), True, 7))
        return out

    class Calculator:
        calculator = None

    monkeypatch.setattr(ev, "EhullCalculator", Calculator)
    monkeypatch.setattr(ev, "default_ehull_fn", lambda **kw: ehull_fn)
    monkeypatch.setattr(ev, "default_relax_fn", lambda **kw: relax_fn)
    return state


def test_evaluate_relax_writes_chunks_keeps_them_on_ctrl_c_and_resumes(capsys, tmp_path, stand_in_potential):
    """Issue 36 case 5: Ctrl-C during `evaluate --relax` (5 of 40 relaxed) printed a traceback and wrote nothing.
    Now each chunk is written as it finishes, Ctrl-C is one line and 130, and --resume relaxes only the rest."""
    import pandas as pd

    salts, out = _salts(tmp_path), tmp_path / "eval"
    argv = [
        "evaluate",
        str(salts),
        "-o",
        str(out),
        "--no_novelty",
        "--no_progress",
        "--relax",
        "--relax_chunk_size",
        "2",
    ]
    stand_in_potential["interrupt_at"] = 5  # in the third chunk
    code, lines = run_cli(argv, capsys)
    assert code == 130 and len(lines) == 1 and "interrupted" in lines[0], lines
    chunks = sorted((out / "relaxed").glob("chunk-*.parquet"))
    assert [p.name for p in chunks] == ["chunk-00000.parquet", "chunk-00001.parquet"]
    kept = pd.concat([pd.read_parquet(p) for p in chunks])
    assert kept["index"].tolist() == [0, 1, 2, 3] and kept["name"].tolist() == ["NaCl", "KCl", "NaBr", "KBr"]
    assert kept["relax_steps"].tolist() == [7] * 4 and kept["relax_converged"].all()
    assert kept["e_hull_relaxed"].tolist() == pytest.approx([-0.45, -0.2, 0.05, 0.7])
    assert kept["relaxed_cif"].str.contains("_cell_length_a   5.0").all() and kept["relax_reason"].isna().all()
    assert not (out / "structures.csv").exists() and not list(out.rglob("*.tmp"))

    code, lines = run_cli(argv, capsys)  # a rerun without --resume is refused, and names --resume
    assert_one_line(code, lines, f"--output_dir {out}", "earlier run", "--resume")
    for changed, fragment in ((["--steps", "30"], "--steps 500, not 30"), (["--limit", "5"], "another input")):
        code, lines = run_cli([*argv, "--resume", *changed], capsys)
        assert_one_line(code, lines, "--resume", str(out / "relaxed"), fragment)
    assert stand_in_potential["seen"] == ["NaCl", "KCl", "NaBr", "KBr", "LiF"]  # no relaxation in the refusals

    stand_in_potential["interrupt_at"], stand_in_potential["seen"] = None, []
    assert main([*argv, "--resume"]) == 0
    assert stand_in_potential["seen"] == ["LiF", "NaF", "LiCl"]  # only the crystals not relaxed yet
    table = pd.read_csv(out / "structures.csv")
    assert table["e_hull_relaxed"].tolist() == pytest.approx([v - 0.5 for v in SALT_EHULL.values()])
    assert table["stable_relaxed"].tolist() == [True, True, True, False, False, True, False]
    assert table["relax_steps"].tolist() == [7] * 7
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_relaxed_earlier"] == 4 and summary["n_stable_relaxed"] == 4
    assert len(list((out / "relaxed").glob("chunk-*.parquet"))) == 4
    stand_in_potential["seen"] = []
    assert main([*argv, "--resume", "--no_plots"]) == 0  # all relaxed: nothing relaxed again, stale plots removed
    assert stand_in_potential["seen"] == [] and not list(out.glob("*.png"))
    assert pd.read_csv(out / "structures.csv")["e_hull_relaxed"].tolist() == table["e_hull_relaxed"].tolist()
    assert main([*argv, "--overwrite"]) == 0  # --overwrite starts again: every crystal relaxed
    assert len(stand_in_potential["seen"]) == 7


def test_a_resumed_evaluation_reads_relaxed_crystals_back_as_written():
    """A CHGNet relaxation of a generated Ca-V-Zn-Cu crystal (stop 35, 300 relaxed) pushed two Cu atoms within 1e-4
    (fractional) of each other: pymatgen's CIF reader merged them into one site of occupancy 2, found no structure,
    and `evaluate --relax --resume` ended in an internal error after an hour of relaxations. It also snaps
    coordinates within 1e-4 of 1/3 and 2/3 onto them. The resume now reads exactly the structure that was written."""
    from crystalformer_rl.evaluation.evaluate import _structure

    lattice = Lattice.from_parameters(7.1, 7.3, 9.2, 90, 101.5, 90)
    coords = [[0.1, 0.2, 0.3], [0.1 + 2e-5, 0.2, 0.3], [1 / 3 + 4e-5, 0.5, 0.25], [0.6, 0.7, 0.8]]
    relaxed = Structure(lattice, ["Cu", "Cu", "Ca", "V"], coords)
    cif = relaxed.to(fmt="cif")
    with pytest.raises(ValueError):
        Structure.from_str(cif, fmt="cif")  # what the resume did
    back = _structure(cif).get_sorted_structure()  # the CIF lists the sites by species
    relaxed = relaxed.get_sorted_structure()
    assert [str(x.specie) for x in back] == [str(x.specie) for x in relaxed] and len(back) == 4
    np.testing.assert_allclose(back.frac_coords, relaxed.frac_coords, atol=1e-8)
    assert _structure(None) is None


def test_evaluate_resume_and_screen_options_are_checked_at_parse_time(capsys, tmp_path):
    salts = tmp_path / "salts.csv"
    for extra, fragment in (
        (["--resume"], "add --relax"),
        (["--relax", "--resume", "--overwrite"], "pass one"),
        (["--relax_screen", "1"], "needs --relax"),
        (["--relax", "--no_stability", "--relax_screen", "1"], "needs --relax and stability"),
        (["--relax", "--relax_screen", "0.05"], "at least --ehull_threshold"),
        (["--relax", "--relax_chunk_size", "0"], "use at least 1"),
    ):
        code, lines = run_cli(["evaluate", str(salts), "-o", str(tmp_path / "e"), *extra], capsys)
        assert_one_line(code, lines, fragment)
    assert main(["evaluate", "--help"]) == 0  # the screen's help gives its measured agreement
    text = " ".join(capsys.readouterr().out.split())
    assert "--relax_screen EHULL" in text and "91.3 % of the per-crystal stable verdicts" in text
    assert "--resume" in text


# ------------------------------------------------------------------------------------------------ 4. prepare-data
def _pilot_csv(tmp_path, val, n):
    path = tmp_path / f"pilot{n}.csv"
    val.iloc[:n][["material_id", "cif"]].to_csv(path, index=False)
    return path


def test_prepare_data_resume_with_other_arguments_is_refused(capsys, tmp_path, val):
    """Issue 36 case 3: `--limit 30`, then the same command without --limit, gave 280 of 300 rows, "failed: 0"."""
    source, out = _pilot_csv(tmp_path, val, 12), tmp_path / "prepared"
    argv = ["prepare-data", str(source), str(out), "--num_proc", "1", "--shard_size", "4"]
    assert main([*argv, "--limit", "6"]) == 0
    assert json.loads((out / "manifest.json").read_text())["limit"] == 6
    code, lines = run_cli([*argv, "--resume"], capsys)
    assert_one_line(code, lines, str(out), "--limit")
    code, lines = run_cli(argv, capsys)
    assert_one_line(code, lines, str(out), "earlier run", "--overwrite", "--resume")
    assert main([*argv, "--overwrite"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoded"] + summary["failed"] == 12
    assert main([*argv, "--resume"]) == 0  # the same arguments: nothing left to do, the same counts
    assert json.loads((out / "summary.json").read_text())["encoded"] == summary["encoded"]
    # the same path with other crystals in it: resuming would mix two sources in one dataset
    val.iloc[1:13][["material_id", "cif"]].to_csv(source, index=False)
    code, lines = run_cli([*argv, "--resume"], capsys)
    assert_one_line(code, lines, str(out), "source's content")


def test_prepare_data_keeps_invalid_crystals_out_of_the_shards(tmp_path):
    """Issue 36 case 3: crystals with atoms 0.004 Å apart, or a 10^4 Å cell, went into training shards; a cif cell
    holding a file path was opened as a local file."""
    import pandas as pd

    secret = tmp_path / "secret.cif"
    secret.write_text(_nacl_cif())
    rows = [("good", _nacl_cif()), ("close", _nacl_cif(close=True)), ("huge", _nacl_cif(a=1e4)), ("path", str(secret))]
    source = tmp_path / "rows.csv"
    pd.DataFrame(rows, columns=["material_id", "cif"]).to_csv(source, index=False)
    out = tmp_path / "prepared"
    assert main(["prepare-data", str(source), str(out), "--num_proc", "1"]) == 0
    shards = pd.concat(pd.read_parquet(p) for p in (out / "shards").glob("shard-*.parquet"))
    assert shards.id.tolist() == ["good"]
    failures = pd.read_csv(out / "failures.csv").set_index("id")
    assert set(failures.index) == {"close", "huge", "path"}
    assert "0.004" in failures.error["close"] and "volume" in failures.error["huge"]
    assert str(secret) in failures.error["path"] and "no such file" not in failures.error["path"]


def test_prepare_data_failed_call_leaves_no_folder_in_the_way(capsys, tmp_path, val):
    """Issue 36 case 5: a failed `prepare-data` left a folder that blocked the corrected command."""
    bad = tmp_path / "bad.csv"
    bad.write_text("material_id,structure_text\nx,y\n")
    out = tmp_path / "prepared"
    code, lines = run_cli(["prepare-data", str(bad), str(out), "--num_proc", "1"], capsys)
    assert_one_line(code, lines, f"source {bad}")
    assert main(["prepare-data", str(_pilot_csv(tmp_path, val, 3)), str(out), "--num_proc", "1"]) == 0


def test_prepare_data_workers_leave_ctrl_c_to_the_main_process():
    """Issue 36 case 5: the first Ctrl-C was ignored (the pool respawned its interrupted workers); now the workers
    ignore SIGINT and the main process stops them at once."""
    import signal

    from crystalformer_rl.data import prepare
    from crystalformer_rl.tokenization import CrystalTokenizer

    previous = signal.getsignal(signal.SIGINT)
    try:
        prepare._init_worker(CrystalTokenizer().to_dict(), in_pool=True)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------------------------ 5. invalid crystals
def test_evaluate_partial_occupancy_and_unknown_elements_are_invalid(tmp_path):
    """Issue 36 case 9: a partially occupied site was struct-valid and novel (its E_hull reason leaked an
    AttributeError); a CIF with element Qq was struct-valid and novel."""
    import pandas as pd

    partial = _nacl_cif(partial=True)
    qq = _nacl_cif().replace("Cl", "Qq")
    source = tmp_path / "odd.csv"
    pd.DataFrame({"id": ["good", "partial", "qq"], "cif": [_nacl_cif(), partial, qq]}).to_csv(source, index=False)
    out = tmp_path / "eval"
    reference = tmp_path / "reference.csv"
    pd.DataFrame({"tokens": ["225-a-K-0-0-0-b-Br-1/2-1/2-1/2-6.6-6.6-6.6-90-90-90"]}).to_csv(reference, index=False)
    argv = ["evaluate", str(source), "-o", str(out), "--no_progress", "--reference", str(reference)]
    assert main([*argv, "--no_stability"]) == 0
    table = pd.read_csv(out / "structures.csv").set_index("name")
    assert table.struct_valid.tolist() == [True, False, False] and not table.novel[["partial", "qq"]].any()
    assert "partial occupanc" in table.struct_reason["partial"] and "Qq" in str(table.loc["qq"].tolist())
    text = (out / "structures.csv").read_text()
    assert "AttributeError" not in text and "Traceback" not in text


# ------------------------------------------------------------------------------------ 7. the run's model folder
def test_rl_pushes_its_own_output_folder_with_a_hub_model_card(tiny_folder, tmp_path, monkeypatch):
    """--push_to_hub_id uploads the run's folder as it is (its card, base-model files, remote code); the card gets
    the Hub's metadata, without a base_model that is a local path."""
    from huggingface_hub import ModelCard

    from crystalformer_rl.modeling_crystalformer import hub_crystalformer

    pushed = []
    monkeypatch.setattr(hub_crystalformer, "upload_model_folder", lambda folder, repo: pushed.append((folder, repo)))
    out = tmp_path / "rl"
    assert main(_rl(tiny_folder, out, "--push_to_hub_id", "someone/tuned")) == 0
    assert pushed == [(out, "someone/tuned")]
    metadata = ModelCard.load(out / "README.md").data
    assert metadata.library_name == "transformers" and metadata.pipeline_tag and "crystalformer" in metadata.tags
    assert metadata.base_model is None  # tiny_folder is a local path
    assert {"modeling_crystalformer.py", "tokenizer_config.json", "config.json"} <= {p.name for p in out.iterdir()}
