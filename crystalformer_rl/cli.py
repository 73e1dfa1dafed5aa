"""The ``crystalformer-rl`` command line.

Examples:
    crystalformer-rl sample -n 100 -o samples                      # the embedded default model
    crystalformer-rl evaluate samples/samples.csv -o samples/eval  # validity, uniqueness, novelty, E_hull, S.U.N.
    crystalformer-rl prepare-data ../shared/data/mp20_pilot/val.csv.gz prepared/mp20-val
    crystalformer-rl pretrain --train_data prepared/mp20-val --output_dir runs/pretrain --max_steps 1000
    crystalformer-rl rl --config configs/rl_ehull.yaml
    crystalformer-rl dpo --config configs/dpo_ehull.yaml
    crystalformer-rl convert epoch_005500.pkl converted/alex20

Run ``crystalformer-rl COMMAND --help`` for a command's options. A bad input (a missing file, an unknown model, an
out-of-range option) is reported as one line naming it, with exit status 2; ``crystalformer-rl --debug COMMAND``
(or ``--debug`` after an argparse command) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UsageError, one_line  # noqa: F401  (re-exported: the CLI's error types)


# What a user can fix from the message alone; anything else keeps its traceback (it is a bug).
USAGE_ERRORS = (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a parse error as one line (``prog: error: message``) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# name -> (module, add-arguments function, run function, one-line help)
COMMANDS = {
    "sample": (
        "crystalformer_rl.sample",
        "add_sample_arguments",
        "run_sample",
        "sample crystals (CSV of token strings and log-likelihoods, CIFs, extxyz)",
    ),
    "evaluate": (
        "crystalformer_rl.evaluation.evaluate",
        "add_evaluate_arguments",
        "run_evaluate",
        "validity, uniqueness, novelty, stability (E_hull) and S.U.N. of crystals, per structure and in summary",
    ),
    "prepare-data": (
        "crystalformer_rl.data.prepare",
        "add_prepare_data_arguments",
        "run_prepare_data",
        "tokenize a CIF dataset (Hub id or local CSV/parquet/JSON) into token shards, reporting bad rows",
    ),
    "convert": (
        "crystalformer_rl.modeling_crystalformer.convert_crystalformer_checkpoint",
        "add_convert_arguments",
        "run_convert",
        "convert an official CrystalFormer pickle checkpoint into a Hugging Face model folder",
    ),
}
# Commands whose options are dataclass fields (TRL's parser; `--config file.yaml` works).
DATACLASS_COMMANDS = {
    "pretrain": ("crystalformer_rl.trainers.commands", "run_pretrain", "pretrain CrystalFormer by maximum likelihood"),
    "rl": ("crystalformer_rl.trainers.commands", "run_rl", "reinforcement fine-tuning with reward models (RLOO/PPO)"),
    "dpo": (
        "crystalformer_rl.trainers.commands",
        "run_dpo",
        "direct preference optimisation on pairs of preferred and rejected crystals",
    ),
    "sft": (
        "crystalformer_rl.trainers.sft",
        "run_sft",
        "the paper's SFT baseline: sample, relax, keep E_hull < 0.1, fine-tune",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="crystalformer-rl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    debug = ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback (any command)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, add_arguments, _, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[debug],
        )
        try:
            getattr(importlib.import_module(module), add_arguments)(sub)
        except ImportError as exc:  # a command whose module is missing stays listed, with the reason
            sub.set_defaults(_unavailable=f"{name} is unavailable: {exc}")
    for name, (_, _, help_text) in DATACLASS_COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for a bad input, printed as one line on stderr)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = False
    while argv and argv[0] == "--debug":  # before the command: pretrain / rl keep TrainingArguments' own --debug
        debug, argv = True, argv[1:]
    command = argv[0] if argv else None
    try:
        if command in DATACLASS_COMMANDS:
            module, run, _ = DATACLASS_COMMANDS[command]
            getattr(importlib.import_module(module), run)(argv[1:])
            return 0
        args = build_parser().parse_args(argv)
        debug = debug or args.debug
        if getattr(args, "_unavailable", None):
            print(args._unavailable, file=sys.stderr)
            return 2
        module, _, run, _ = COMMANDS[args.command]
        getattr(importlib.import_module(module), run)(args)
        return 0
    except SystemExit as exc:  # argparse (--help, a parse error): a status, not an exception, for in-process callers
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except USAGE_ERRORS as exc:
        if debug:
            raise
        print(f"crystalformer-rl {command}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
