"""The ``crystalformer-rl`` command line: every command, its dataclass arguments and its run function.

Examples:
    crystalformer-rl sample -n 100 -o samples                      # the embedded default model
    crystalformer-rl evaluate samples/samples.csv -o samples/eval  # validity, uniqueness, novelty, E_hull, S.U.N.
    crystalformer-rl prepare-data ../shared/data/mp20_pilot/val.csv.gz prepared/mp20-val
    crystalformer-rl pretrain --train_data prepared/mp20-val --output_dir runs/pretrain --max_steps 1000
    crystalformer-rl rl --config configs/rl_ehull.yaml
    crystalformer-rl dpo --config configs/dpo_ehull.yaml
    crystalformer-rl convert epoch_005500.pkl converted/alex20

Run ``crystalformer-rl COMMAND --help`` for a command's options: the help strings of its dataclass fields, spelled
with underscores (``--num_samples``; the dashed ``--num-samples`` still works, with a deprecation note), and
``--config file.yaml`` to read them from a file. A bad input (a missing file, an unknown model, an out-of-range
option) is reported as one line naming it, with exit status 2; ``crystalformer-rl --debug COMMAND`` (or
``--debug`` after the command, except for the trainers, whose ``--debug`` is `TrainingArguments`') shows the
full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError, one_line
from ..utils import lazy_exports
from . import help_cache, help_schema


if TYPE_CHECKING:
    from .parser import CommandParser


__all__ = [
    "COMMANDS",
    "Command",
    "CommandArguments",
    "CommandParser",
    "build_parser",
    "main",
    "naming_input",
    "parse_args",
    "refresh_help_schema",
]
# the parser imports TRL: loaded to parse a command, not to print a stored --help
__getattr__, _ = lazy_exports(__name__, {"CommandArguments": ".parser", "CommandParser": ".parser"})

# What a user can fix from the message alone: one line, exit status 2. Anything else is a bug: one line naming its
# type and pointing at --debug, exit status 1. Ctrl-C: one line, exit status 130. `--debug` keeps the traceback.
USAGE_ERRORS = (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
INTERRUPTED = 130


@contextmanager
def naming_input(option: str, value) -> Iterator[None]:
    """Inside the block, a failure to read the user's input ``value`` (given as ``option``) becomes a one-line
    `UsageError` naming both, whatever the library raised (an `OSError`, a pickle, safetensors, YAML, Arrow or
    ASE error, ...): the model folder without weights and the corrupt parquet file are the user's to fix."""
    try:
        yield
    except UsageError:
        raise
    except Exception as exc:
        reason = one_line(exc)
        reason = reason if type(exc).__name__ in ("OSError", "ValueError") else f"{type(exc).__name__}: {reason}"
        raise UsageError(f"{option} {value}: {reason}") from exc


@dataclass(frozen=True)
class Command:
    help: str
    run: str  # "module:function", called with the parsed dataclasses
    arguments: tuple[str, ...]  # "module:Dataclass" of its options, parsed together
    yaml_config: bool = True  # `--config file.yaml`
    epilog: str | None = None


_TRAIN = "crystalformer_rl.commands.train"
COMMANDS = {
    "sample": Command(
        "sample crystals (CSV of token strings and log-likelihoods, CIFs, extxyz)",
        "crystalformer_rl.commands.sample:run_sample",
        ("crystalformer_rl.commands.sample:SampleArguments",),
        epilog="examples:\n"
        "  crystalformer-rl sample -n 100 -o samples                  # training space-group distribution\n"
        "  crystalformer-rl sample -g 225 -n 20 -e La H -o lah        # La-H crystals in Fm-3m\n"
        "  crystalformer-rl sample -g 221 -w a b c -e Sr Ti O -n 10   # forced Wyckoff letters\n"
        "  crystalformer-rl sample --model epoch_005500.pkl -n 1000   # an official checkpoint",
    ),
    "mcmc": Command(
        "Metropolis-Hastings chains on p_base · exp(r / τ), started from the model's samples (as sample, + mcmc.json)",
        "crystalformer_rl.commands.mcmc:run_mcmc",
        ("crystalformer_rl.commands.mcmc:MCMCArguments",),
        epilog="examples:\n"
        "  crystalformer-rl mcmc -g 225 -n 100 --nsweeps 10 -o chains          # the reference's chain on p_base\n"
        "  crystalformer-rl mcmc -n 200 --reward ehull --temperature 0.1 -o post  # the posterior of the RL recipe",
    ),
    "evaluate": Command(
        "validity, uniqueness, novelty, stability (E_hull) and S.U.N. of crystals, per structure and in summary",
        "crystalformer_rl.commands.evaluate:run_evaluate",
        ("crystalformer_rl.commands.evaluate:EvaluateArguments",),
        epilog="examples:\n"
        "  crystalformer-rl evaluate samples/samples.csv -o samples/eval         # novelty vs the shipped corpus\n"
        "  crystalformer-rl evaluate samples/cifs --reference train.parquet      # another reference\n"
        "  crystalformer-rl evaluate samples/samples.csv --relax -o eval-relaxed # relaxed E_hull",
    ),
    "benchmark": Command(
        "the MP-20 table's metrics (validity, COV-R/P, w(ρ), w(#elem) vs MP-20 test) beside S.U.N. and novelty",
        "crystalformer_rl.commands.benchmark:run_benchmark",
        ("crystalformer_rl.commands.benchmark:BenchmarkArguments",),
        epilog="example (the published table uses 10,000 samples):\n"
        "  crystalformer-rl sample -n 10000 -o samples10k && crystalformer-rl benchmark samples10k/samples.csv -o bench",
    ),
    "prepare-data": Command(
        "tokenize a CIF dataset (Hub id or local CSV/parquet/JSON) into token shards, reporting bad rows",
        "crystalformer_rl.commands.prepare_data:run_prepare_data",
        ("crystalformer_rl.commands.prepare_data:PrepareDataArguments",),
        epilog="example:\n  crystalformer-rl prepare-data zdcao/alex-20 prepared/alex20 --num_proc 8",
    ),
    "convert": Command(
        "convert an official CrystalFormer pickle checkpoint into a Hugging Face model folder",
        "crystalformer_rl.commands.convert:run_convert",
        ("crystalformer_rl.commands.convert:ConvertArguments",),
        yaml_config=False,  # its --config is the checkpoint's JSON hyper-parameters
        epilog="examples:\n"
        "  crystalformer-rl convert alex20 converted/alex20\n"
        "  crystalformer-rl convert epoch_005500.pkl converted/model --config reference_config.json",
    ),
    "pretrain": Command(
        "pretrain CrystalFormer by maximum likelihood",
        f"{_TRAIN}:run_pretrain",
        (f"{_TRAIN}:PretrainScriptArguments", "crystalformer_rl.trainers.pretrain_config:CrystalPretrainConfig"),
    ),
    "rl": Command(
        "reinforcement fine-tuning with reward models (RLOO/PPO)",
        f"{_TRAIN}:run_rl",
        (f"{_TRAIN}:RLScriptArguments", "crystalformer_rl.trainers.crystal_rloo_config:CrystalRLConfig"),
    ),
    "dpo": Command(
        "direct preference optimisation on pairs of preferred and rejected crystals",
        f"{_TRAIN}:run_dpo",
        (f"{_TRAIN}:DPOScriptArguments", "crystalformer_rl.trainers.crystal_dpo_config:CrystalDPOConfig"),
    ),
    "sft": Command(
        "the paper's SFT baseline: sample, relax, keep E_hull < 0.1, fine-tune",
        f"{_TRAIN}:run_sft",
        (f"{_TRAIN}:SFTScriptArguments", "crystalformer_rl.trainers.pretrain_config:CrystalPretrainConfig"),
    ),
}


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def make_parser(command: str) -> CommandParser:
    """The parser of one command (its dataclasses' fields are its options)."""
    from .parser import CommandParser

    spec = COMMANDS[command]
    return CommandParser(
        [_load(path) for path in spec.arguments],
        prog=f"crystalformer-rl {command}",
        description=spec.help,
        epilog=spec.epilog,
        yaml_config=spec.yaml_config,
    )


def refresh_help_schema() -> Path:
    """Store every command's help as the live parsers give it (:mod:`.help_schema`); the tests check it is current."""
    return help_schema.write(help_schema.build({command: make_parser(command) for command in COMMANDS}))


def parse_args(command: str, args: list[str] | None = None) -> tuple:
    """A command's dataclass instances from an argument list (default ``sys.argv[1:]``), to pass to its run
    function: ``run_rl(*parse_args("rl", ["--output_dir", "runs/rl"]))``."""
    return make_parser(command).parse(args)


class _MainParser(argparse.ArgumentParser):
    """The command list (``crystalformer-rl --help``); ``parse_args(["sample", ...])`` returns the command's
    dataclasses (one instance, or a tuple for the trainers' script arguments and config)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        while args and args[0] == "--debug":
            args = args[1:]
        if args and args[0] in COMMANDS:
            parsed = parse_args(args[0], args[1:])
            return parsed[0] if len(parsed) == 1 else parsed
        return super().parse_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = _MainParser(
        prog="crystalformer-rl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback (any command)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in COMMANDS.items():
        subparsers.add_parser(name, help=spec.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for a bad input, printed as one line on stderr)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = False
    while argv and argv[0] == "--debug":  # before the command: the trainers keep TrainingArguments' own --debug
        debug, argv = True, argv[1:]
    command = argv[0] if argv else None
    try:
        if command not in COMMANDS:
            build_parser().parse_args(argv)  # --help, or a one-line error naming the unknown command
            return 2
        if help_cache.wants_help(argv[1:]):  # printed without importing the command's dataclasses (TRL, torch)
            text = help_cache.read(command) or help_schema.format_help(command)
            if text is not None:
                print(text, end="")
                return 0
        try:
            parser = make_parser(command)
        except ImportError as exc:  # a command whose dependencies are missing stays listed, with the reason
            print(f"crystalformer-rl {command} is unavailable: {exc}", file=sys.stderr)
            return 2
        if help_cache.wants_help(argv[1:]):
            text = parser.format_help()
            help_cache.write(command, text)
            print(text, end="")
            return 0
        debug = debug or (parser.debug_flag and any(a == "--debug" for a in argv[1:]))
        parsed = parser.parse(argv[1:])  # parsed once, as TRL's scripts do; --help ends here, before the run imports
        try:
            run = _load(COMMANDS[command].run)
        except ImportError as exc:
            print(f"crystalformer-rl {command} is unavailable: {exc}", file=sys.stderr)
            return 2
        run(*parsed)
        return 0
    except SystemExit as exc:  # argparse (--help, a parse error): a status, not an exception, for in-process callers
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"crystalformer-rl {command}: interrupted; the files already written are kept", file=sys.stderr)
        return INTERRUPTED
    except USAGE_ERRORS as exc:
        if debug:  # the library's own exception, where one was named as an input error
            raise (exc.__cause__ if isinstance(exc.__cause__, Exception) else exc) from None
        print(f"crystalformer-rl {command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        print(
            f"crystalformer-rl {command}: internal error: {type(exc).__name__}: {one_line(exc)} "
            f"(`crystalformer-rl --debug {command} ...` shows the traceback)",
            file=sys.stderr,
        )
        return 1
