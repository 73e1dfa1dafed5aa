"""``crystalformer-rl sample``: draw crystals and write them as CSV (token strings + log-likelihoods), CIFs and
extxyz, with the sampling time recorded for S.U.N.-per-second evaluation. The library behind it is
:mod:`crystalformer_rl.sampling`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..crystallography import LETTERS, NUM_SPACE_GROUPS, letter_to_index
from ..modeling_crystalformer import SamplingOptions
from ..pretrained import load_model, space_group_distribution
from ..sampling import crystals_to_frame, draw_space_groups, sample_crystals, write_samples
from . import naming_input
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
    format: list[str] = field(
        default_factory=lambda: ["csv", "cif"],
        metadata={"help": "Files to write.", "choices": ["csv", "cif", "extxyz"]},
    )

    def __post_init__(self):
        super().__post_init__()  # ranges, scalars as one-item lists, the sampling options
        for group in self.space_group or ():
            if not 1 <= group <= NUM_SPACE_GROUPS:
                raise ValueError(
                    f"{self._option('space_group')}: {group} is not a space group; use 1..{NUM_SPACE_GROUPS}"
                )
        if self.wyckoff:
            self._check_wyckoff()

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


def run_sample(args: SampleArguments) -> dict:
    torch.manual_seed(args.seed)
    with naming_input("--model", args.model or "(the embedded model)"):
        model = load_model(args.model).eval()
        distribution = space_group_distribution(args.model)
    groups = draw_space_groups(args.num_samples, args.space_group, distribution, args.seed)
    crystals, logps, seconds = sample_crystals(
        model, groups, batch_size=args.batch_size, seed=args.seed, sampling_options=args
    )
    frame = crystals_to_frame(crystals, logps)  # the CIFs / extxyz hold the sampled tokens, not the 6-decimal strings
    meta = write_samples(frame, Path(args.output_dir), args.format, seconds, dataclasses.asdict(args), crystals)
    print(json.dumps({k: meta[k] for k in ("num_samples", "valid_tokens", "sampling_seconds", "files")}, indent=2))
    return meta
