"""``crystalformer-rl sample``: draw crystals and write them as CSV (token strings + log-likelihoods), CIFs and
extxyz, with the sampling time recorded for S.U.N.-per-second evaluation. The library behind it is
:mod:`crystalformer_rl.sampling`."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..crystallography import LETTERS, NUM_SPACE_GROUPS, letter_to_index
from ..errors import UsageError
from ..modeling_crystalformer import SamplingOptions
from ..pretrained import load_model, space_group_distribution
from ..sampling import SampleWriter, available_memory, draw_space_groups, iter_sample_batches, sampling_memory_estimate
from . import INTERRUPTED, naming_input
from .outputs import SAMPLE_OUTPUTS, check_output_dir
from .parser import CommandArguments


@dataclass
class SampleArguments(CommandArguments, SamplingOptions):
    """The options of ``crystalformer-rl sample``: the model's :class:`SamplingOptions` (temperature, top_p,
    first_atom_temperature, elements, wyckoff) and what to sample and write."""

    ranges = {"num_samples": (1, True), "batch_size": (1, True)}

    model: str | None = field(
        default=None,
        metadata={"help": "Model folder, Hub id, or official CrystalFormer .pkl (default: the embedded model)."},
    )
    space_group: list[int] | None = field(
        default=None,
        metadata={
            "help": f"Space group(s) 1..{NUM_SPACE_GROUPS}, cycled through; default: the model's training "
            "distribution.",
            "aliases": ["-g"],
        },
    )
    num_samples: int = field(default=100, metadata={"help": "Crystals to sample.", "aliases": ["-n"]})
    seed: int = field(default=0, metadata={"help": "Seed of the sampler and of the space-group draw."})
    batch_size: int = field(default=500, metadata={"help": "Crystals per sampling batch."})
    output_dir: str = field(default="samples", metadata={"help": "Where the files go.", "aliases": ["-o"]})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace an earlier run's files in --output_dir (without it such a folder is refused)."},
    )
    format: list[str] = field(
        default_factory=lambda: ["csv", "cif"],
        metadata={"help": "Files to write.", "choices": ["csv", "cif", "extxyz"]},
    )

    def __post_init__(self):
        super().__post_init__()  # ranges, scalars as one-item lists, the sampling options
        self._check_space_groups()
        if self.wyckoff:
            self._check_wyckoff()

    def _check_space_groups(self) -> None:
        for group in self.space_group or ():
            if not 1 <= group <= NUM_SPACE_GROUPS:
                raise ValueError(
                    f"{self._option('space_group')}: {group} is not a space group; use 1..{NUM_SPACE_GROUPS}"
                )

    def _check_wyckoff(self) -> None:
        """Forced Wyckoff letters need the space group(s) they belong to, and must exist in each of them."""
        if not self.space_group:
            raise ValueError(
                f"{self._option('wyckoff')}: {' '.join(map(str, self.wyckoff))}: Wyckoff letters belong to a space "
                f"group; give it with {self._option('space_group').removeprefix('argument ')}"
            )
        from ..wyckoff import WyckoffTables

        wmax = WyckoffTables.load().wmax
        for letter in self.wyckoff:
            if not isinstance(letter, str) or letter not in LETTERS[1:]:
                continue  # indices and per-site lists: the sampler checks them
            for group in self.space_group:
                if letter_to_index(letter) > wmax[group - 1]:
                    raise ValueError(
                        f"{self._option('wyckoff')}: {letter}: no Wyckoff position {letter} in space group {group} "
                        f"(positions a..{LETTERS[int(wmax[group - 1])]})"
                    )


def _check_memory(args: SampleArguments, model) -> None:
    """Refuse a batch whose sampler memory would take more than a quarter of what is free (one line, exit 2)."""
    batch = min(args.batch_size, args.num_samples)
    need = sampling_memory_estimate(model.config, batch)
    free = available_memory(next(model.parameters()).device)
    if free is not None and need > free / 4:
        fits = max(1, int(batch * free / 4 / need))
        raise UsageError(
            f"--batch_size {args.batch_size}: a batch of {batch} crystals needs about {need / 2**30:.1f} GiB, more "
            f"than a quarter of the {free / 2**30:.1f} GiB free; use --batch_size {min(fits, 500)} or less (the "
            "speed barely changes above a few hundred)"
        )


def run_sample(args: SampleArguments) -> dict:
    """``crystalformer-rl sample``: the output folder is checked first (another run's files there are refused
    unless --overwrite), the model loads, and the crystals are written batch by batch (Ctrl-C keeps the finished
    batches: their rows, CIFs and a metadata file marked interrupted)."""
    check_output_dir(args.output_dir, "--output_dir", SAMPLE_OUTPUTS, overwrite=args.overwrite)
    torch.manual_seed(args.seed)
    with naming_input("--model", args.model or "(the embedded model)"):
        model = load_model(args.model).eval()
        distribution = None if args.space_group else space_group_distribution(args.model)
    _check_memory(args, model)
    groups = draw_space_groups(args.num_samples, args.space_group, distribution, args.seed)
    writer = SampleWriter(Path(args.output_dir), args.format, dataclasses.asdict(args))
    batches = iter_sample_batches(model, groups, batch_size=args.batch_size, seed=args.seed, sampling_options=args)
    try:
        for crystals, logps, seconds in batches:  # the CIFs / extxyz hold the sampled tokens, not 6-decimal strings
            writer.add(crystals, logps, seconds)
    except KeyboardInterrupt:
        batches.close()  # its progress bar ends its line before the note
        writer.finish(interrupted=True)
        print(
            f"crystalformer-rl sample: interrupted after {writer.num_samples} of {args.num_samples} crystals; "
            f"the finished batches are kept in {args.output_dir}",
            file=sys.stderr,
        )
        raise SystemExit(INTERRUPTED) from None
    meta = writer.finish()
    print(json.dumps({k: meta[k] for k in ("num_samples", "valid_tokens", "sampling_seconds", "files")}, indent=2))
    return meta
