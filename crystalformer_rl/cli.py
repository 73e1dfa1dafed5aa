"""The ``crystalformer-rl`` command line.

Examples:
    crystalformer-rl prepare-data ../shared/data/mp20_pilot/val.csv.gz prepared/mp20-val --num-proc 2
    crystalformer-rl prepare-data zdcao/alex-20 prepared/alex-20 --streaming
    crystalformer-rl convert epoch_005500.pkl converted/alex20
"""

from __future__ import annotations

import argparse
import importlib
import sys


# name -> (module, add-arguments function, run function, one-line help)
COMMANDS = {
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystalformer-rl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, add_arguments, _, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        try:
            getattr(importlib.import_module(module), add_arguments)(sub)
        except ImportError as exc:  # a command whose module is missing stays listed, with the reason
            sub.set_defaults(_unavailable=f"{name} is unavailable: {exc}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return 2
    module, _, run, _ = COMMANDS[args.command]
    getattr(importlib.import_module(module), run)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
