"""``crystalformer-rl sample``: draw crystals and write them as CSV (token strings + log-likelihoods), CIFs and
extxyz, with the sampling time recorded for S.U.N.-per-second evaluation.

The command line only; the functions behind it live in :mod:`crystalformer_rl.sampling` (re-exported here for
code that imported them from this module)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .crystallography import NUM_SPACE_GROUPS, atomic_number
from .pretrained import load_model, space_group_distribution
from .sampling import draw_space_groups, sample_to_frame, structures_from_token_strings, write_samples


__all__ = [
    "add_sample_arguments",
    "draw_space_groups",
    "run_sample",
    "sample_to_frame",
    "structures_from_token_strings",
    "write_samples",
]


# argparse types: a bad value is reported as one line naming the option and the allowed range.
def _space_group(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a space-group number; use 1..{NUM_SPACE_GROUPS}") from None
    if not 1 <= value <= NUM_SPACE_GROUPS:
        raise argparse.ArgumentTypeError(f"{value} is not a space group; use 1..{NUM_SPACE_GROUPS}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: use at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value}: use a number > 0")
    return value


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{value}: use a number in (0, 1]")
    return value


def _element(text: str) -> str:
    try:
        atomic_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an element symbol (e.g. Li, Fe, O)") from None
    return text


def add_sample_arguments(parser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="model folder, Hub id, or official CrystalFormer .pkl (default: the embedded model)",
    )
    parser.add_argument(
        "--space-group",
        "-g",
        type=_space_group,
        nargs="+",
        default=None,
        help="space group(s), cycled through; default: the model's training distribution",
    )
    parser.add_argument("--num-samples", "-n", type=_positive_int, default=100)
    parser.add_argument(
        "--elements", "-e", type=_element, nargs="+", default=None, help="allowed elements, e.g. Li Fe P O"
    )
    parser.add_argument("--wyckoff", "-w", nargs="+", default=None, help="forced Wyckoff letters, e.g. a c f")
    parser.add_argument("--temperature", "-T", type=_positive_float, default=1.0)
    parser.add_argument("--first-atom-temperature", type=_positive_float, default=None)
    parser.add_argument("--top-p", type=_probability, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=_positive_int, default=500)
    parser.add_argument("--output-dir", "-o", default="samples")
    parser.add_argument("--format", nargs="+", default=["csv", "cif"], choices=["csv", "cif", "extxyz"])
    parser.epilog = (
        "examples:\n"
        "  crystalformer-rl sample -n 100 -o samples                  # training space-group distribution\n"
        "  crystalformer-rl sample -g 225 -n 20 -e La H -o lah        # La-H crystals in Fm-3m\n"
        "  crystalformer-rl sample -g 221 -w a b c -e Sr Ti O -n 10   # forced Wyckoff letters\n"
        "  crystalformer-rl sample --model epoch_005500.pkl -n 1000   # an official checkpoint"
    )


def run_sample(args) -> dict:
    torch.manual_seed(args.seed)
    model = load_model(args.model).eval()
    groups = draw_space_groups(args.num_samples, args.space_group, space_group_distribution(args.model), args.seed)
    frame, seconds = sample_to_frame(
        model,
        groups,
        batch_size=args.batch_size,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        elements=args.elements,
        wyckoff=args.wyckoff,
        first_atom_temperature=args.first_atom_temperature,
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command", "debug") and not k.startswith("_")}
    meta = write_samples(frame, Path(args.output_dir), args.format, seconds, settings)
    print(json.dumps({k: meta[k] for k in ("num_samples", "valid_tokens", "sampling_seconds", "files")}, indent=2))
    return meta
