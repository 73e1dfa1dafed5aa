"""The command-line layer (issue 13, item 3): every command's options are dataclasses parsed by one parser, spelled
with underscores (the dashed spelling works, with one deprecation line), with their short flags, positionals and
``--config file.yaml``; and the one sampling-options dataclass the model, the CLI and the RL config share."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

from crystalformer_rl.commands import COMMANDS, help_schema, main, make_parser, parse_args
from crystalformer_rl.commands.sample import SampleArguments
from crystalformer_rl.errors import UsageError
from crystalformer_rl.modeling_crystalformer import SamplingOptions
from tests.helpers.rl_toy import tiny_model


def err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------- spelling, help
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_is_dataclasses_with_underscore_flags(command):
    parser = make_parser(command)
    assert parser.dataclass_types and all(dataclasses.is_dataclass(cls) for cls in parser.dataclass_types)
    long_options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    assert long_options and not [o for o in long_options if "-" in o[2:]]  # one spelling: no --num-samples
    fields = [f.name for cls in parser.dataclass_types for f in dataclasses.fields(cls) if "_" in f.name]
    text = parser.format_help()
    for name in fields[:5]:
        assert f"--{name}" in text, name


def test_help_is_the_dataclass_help_strings(capsys):
    assert main(["sample", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--num_samples", "--output_dir", "--space_group", "--first_atom_temperature", "--top_p", "-T"):
        assert flag in text
    assert SamplingOptions.__dataclass_fields__["top_p"].metadata["help"].split(",")[0] in text
    assert not re.search(r"--\w+-\w+", text)


def test_dashed_flag_works_with_one_deprecation_line(capsys):
    (args,) = parse_args("sample", ["--num-samples", "3", "--batch-size=2", "--num-samples", "4"])
    assert (args.num_samples, args.batch_size) == (4, 2)
    assert err_lines(capsys) == [
        "crystalformer-rl sample: --num-samples is deprecated; use --num_samples",
        "crystalformer-rl sample: --batch-size is deprecated; use --batch_size",
    ]
    (args,) = parse_args("prepare-data", ["in.csv", "out", "--num-proc", "1", "--no-structure"])
    assert args.num_proc == 1 and args.structure is False
    assert len(err_lines(capsys)) == 2
    (args,) = parse_args("sample", ["--num_samples", "3"])
    assert err_lines(capsys) == []


def test_dashed_flag_through_main_is_noted_once(capsys, tmp_path):
    assert main(["sample", "--num-samples", "0", "-o", str(tmp_path)]) == 2
    assert err_lines(capsys) == [
        "crystalformer-rl sample: --num-samples is deprecated; use --num_samples",
        "crystalformer-rl sample: error: argument --num_samples/-n: 0: use at least 1",
    ]


def test_trainer_commands_take_the_dashed_spelling(capsys, tmp_path):
    script, config = parse_args("rl", ["--output-dir", str(tmp_path), "--use_cpu", "true", "--reward-kwargs", "{}"])
    assert config.output_dir == str(tmp_path) and script.reward_kwargs == "{}"
    assert len(err_lines(capsys)) == 2


# ---------------------------------------------------------------------------------- short flags, positionals
def test_short_aliases():
    argv = ["-n", "5", "-g", "225", "221", "-e", "Li", "O", "-w", "a", "b", "-T", "0.5", "-o", "out"]
    (args,) = parse_args("sample", argv)
    assert (args.num_samples, args.space_group, args.elements) == (5, [225, 221], ["Li", "O"])
    assert (args.wyckoff, args.temperature, args.output_dir) == (["a", "b"], 0.5, "out")
    assert parse_args("evaluate", ["in.csv", "-o", "eval"])[0].output_dir == "eval"


def test_positionals_and_their_options():
    (args,) = parse_args("evaluate", ["samples.csv", "--no_stability"])
    assert args.input == "samples.csv" and args.stability is False
    assert parse_args("evaluate", ["--input", "samples.csv"])[0].input == "samples.csv"
    (args,) = parse_args("prepare-data", ["zdcao/alex-20", "prepared"])
    assert (args.source, args.output_dir) == ("zdcao/alex-20", "prepared")
    (args,) = parse_args("convert", ["alex20", "--output_dir", "out", "--config", "c.json"])
    assert (args.checkpoint, args.output_dir, args.model_config) == ("alex20", "out", "c.json")
    assert parse_args("convert", ["alex20", "out"])[0].output_dir == "out"


def test_missing_positional_is_one_line(capsys):
    assert main(["evaluate", "-o", "eval"]) == 2
    (line,) = err_lines(capsys)
    assert line.startswith("crystalformer-rl evaluate: error:") and "input" in line


def test_compare_is_repeatable():
    (args,) = parse_args("evaluate", ["in.csv", "--compare", "a=x.csv", "--compare", "b=y.csv"])
    assert args.compare == ["a=x.csv", "b=y.csv"]


# ------------------------------------------------------------------------------------------------- --config
def test_sample_options_from_a_yaml_config(tmp_path):
    path = tmp_path / "sample.yaml"
    path.write_text(yaml.safe_dump({"num_samples": 7, "elements": ["Li", "O"], "temperature": 0.5, "seed": 3}))
    (args,) = parse_args("sample", ["--config", str(path), "-n", "9"])  # the command line wins
    assert isinstance(args, SampleArguments) and isinstance(args, SamplingOptions)
    assert (args.num_samples, args.elements, args.temperature, args.seed) == (9, ["Li", "O"], 0.5, 3)
    path.write_text(yaml.safe_dump({"num_sample": 7}))
    with pytest.raises(UsageError, match="unknown key"):
        parse_args("sample", ["--config", str(path)])
    with pytest.raises(UsageError, match="no such file"):
        parse_args("sample", ["--config", str(tmp_path / "missing.yaml")])


def test_a_positional_overrides_its_config_value(tmp_path):
    path = tmp_path / "evaluate.yaml"
    path.write_text(yaml.safe_dump({"input": "a.csv", "relax": True}))
    (args,) = parse_args("evaluate", [f"--config={path}"])
    assert (args.input, args.relax) == ("a.csv", True)
    assert parse_args("evaluate", ["b.csv", "--config", str(path)])[0].input == "b.csv"


def test_run_functions_take_the_parsed_dataclasses_only():
    """As TRL's scripts: parsed once (``main`` or ``parse_args``), then ``run_X(*dataclasses)``; no argument lists."""
    import inspect

    for name, spec in COMMANDS.items():
        module, function = spec.run.split(":")
        run = getattr(__import__(module, fromlist=[function]), function)
        parameters = list(inspect.signature(run).parameters.values())[: len(spec.arguments)]
        assert all(p.default is inspect.Parameter.empty for p in parameters), name
        assert all("list" not in str(p.annotation) for p in parameters), name


# ------------------------------------------------------------------------------------------ SamplingOptions
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0}, "temperature: 0: use a number > 0"),
        ({"first_atom_temperature": -1.0}, "first_atom_temperature: -1.0: use a number > 0"),
        ({"top_p": 0}, "top_p: 0: use a number > 0"),
        ({"top_p": 1.5}, "top_p: 1.5: use a number in (0, 1]"),
        ({"elements": ["Li", "Xx"]}, "elements: unknown element symbol 'Xx' (e.g. Li, Fe, O)"),
        ({"elements": [["Na"], ["Qq"]]}, "elements: unknown element symbol 'Qq'"),
    ],
)
def test_sampling_options_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        SamplingOptions(**kwargs)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_cli_names_the_flag_in_a_sampling_option_error():
    with pytest.raises(ValueError, match=r"^argument --temperature/-T: 0.0: use a number > 0$"):
        SampleArguments(temperature=0.0)
    with pytest.raises(ValueError, match=r"^argument --top_p: 2.0: use a number in \(0, 1\]$"):
        SampleArguments(top_p=2.0)


def test_sample_with_sampling_options_equals_the_keyword_call():
    model = tiny_model().eval()
    groups = [225, 14, 1, 62]
    keywords = model.sample(groups, seed=7, temperature=0.8, top_p=0.9, first_atom_temperature=1.3, elements=["O"])
    options = SamplingOptions(temperature=0.8, top_p=0.9, first_atom_temperature=1.3, elements=["O"])
    with_options = model.sample(groups, sampling_options=options, seed=7)
    partial = SamplingOptions(temperature=0.8, top_p=0.9)
    aliased = model.sample(groups, sampling_options=partial, seed=7, T1=1.3, elements=["O"])
    hotter = dataclasses.replace(options, temperature=2.0)
    overridden = model.sample(groups, sampling_options=hotter, seed=7, temperature=0.8)  # keywords win
    for out in (with_options, aliased, overridden):
        for key in ("G", "W", "A", "XYZ", "L", "logp"):
            assert torch.equal(out[key], keywords[key]), key
    # the CLI's arguments are sampling options themselves
    cli = model.sample(groups, sampling_options=SampleArguments(**dataclasses.asdict(options)), seed=7)
    assert torch.equal(cli.XYZ, keywords.XYZ)
    with pytest.raises(TypeError, match="unknown sampling option"):
        model.sample(groups, seed=7, temprature=0.8)
    with pytest.raises(ValueError, match="T1"):
        model.sample(groups, first_atom_temperature=1.0, T1=2.0)


def test_rl_config_sampling_options(tmp_path):
    from crystalformer_rl.trainers import CrystalRLConfig

    config = CrystalRLConfig(output_dir=str(tmp_path), use_cpu=True, temperature=0.7, top_p=0.9)
    assert config.sampling_options() == SamplingOptions(temperature=0.7, top_p=0.9)
    with pytest.raises(ValueError, match="top_p"):
        CrystalRLConfig(output_dir=str(tmp_path), use_cpu=True, top_p=0)


def test_even_the_first_trainer_help_prints_without_importing_trl(tmp_path):
    """``rl --help`` lists some 200 `TrainingArguments`; building them imports TRL, transformers and torch (~2 s).
    The shipped help schema prints the same text on the first call (issue 35: under 2 s) and imports none of them;
    the stored text serves the later calls."""
    script = (
        "import sys\n"
        "from crystalformer_rl.commands import main\n"
        "main(['rl', '--help'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "100"}
    first, second = (
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
        for _ in range(2)
    )
    shipped_is_current = help_schema.format_help("rl") is not None  # False only with other transformers/TRL/torch
    assert first.stderr.strip() == ("[]" if shipped_is_current else "['torch', 'transformers', 'trl']")
    assert second.stderr.strip() == "[]"
    assert first.stdout == second.stdout and "crystal options" in first.stdout and "--learning_rate" in first.stdout


@pytest.mark.parametrize("columns", ["80", "137"])
def test_the_shipped_help_schema_is_current_and_prints_the_live_help(monkeypatch, columns):
    """The schema was made from today's sources (else: refresh it, see `help_schema`); with the libraries it was
    made with, it equals the live parsers' and prints their help character for character at any width; with other
    versions of them it is not used."""
    stored = json.loads(help_schema.SCHEMA_FILE.read_text())
    monkeypatch.setenv("COLUMNS", columns)
    live = help_schema.build({command: make_parser(command) for command in COMMANDS})
    refresh = "refresh it: crystalformer_rl.commands.refresh_help_schema()"
    assert {c: e["sources"] for c, e in live["commands"].items()} == {
        c: e["sources"] for c, e in stored["commands"].items()
    }, refresh
    if live["libraries"] != stored["libraries"]:  # another transformers / TRL / torch: the live help is printed
        assert all(help_schema.format_help(command) is None for command in COMMANDS)
        return
    assert live == stored, refresh
    for command in COMMANDS:
        assert help_schema.format_help(command) == make_parser(command).format_help(), command


def test_a_help_schema_of_other_sources_or_libraries_is_not_used(monkeypatch, tmp_path):
    stored = json.loads(help_schema.SCHEMA_FILE.read_text())
    stored["libraries"] = help_schema._versions()  # as if made with the libraries installed here
    edited = json.loads(json.dumps(stored))
    edited["commands"]["rl"]["sources"]["sha256"] = "0" * 64  # a field's help edited since the schema was made
    other = json.loads(json.dumps(stored))
    other["libraries"]["trl"] = "0.0.1"
    for schema, expected in ((stored, True), (edited, False), (other, False)):
        path = tmp_path / "schema.json"
        path.write_text(json.dumps(schema))
        monkeypatch.setattr(help_schema, "SCHEMA_FILE", path)
        assert (help_schema.format_help("rl") is not None) is expected
        assert help_schema.format_help("sample") is not None or schema is other
    monkeypatch.setattr(help_schema, "SCHEMA_FILE", tmp_path / "missing.json")
    assert help_schema.format_help("rl") is None
