"""``crystalformer-rl sample``: draw crystals and write them as CSV (token strings + log-likelihoods), CIFs and
extxyz, with the sampling time recorded for S.U.N.-per-second evaluation. The library behind it is
:mod:`crystalformer_rl.sampling`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..crystallography import NUM_SPACE_GROUPS
from ..modeling_crystalformer import SamplingOptions
from ..pretrained import load_model, space_group_distribution
from ..sampling import crystals_to_frame, draw_space_groups, sample_crystals, write_samples
from .parser import CommandArguments


@dataclass
class SampleArguments(CommandArguments, SamplingOptions):
    """The options of ``crystalformer-rl sample``: the model's :class:`SamplingOptions` (temperature, top_p,
    first_atom_temperature, elements, wyckoff) and what to sample and write."""

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
        for group in self.space_group or ():
            if not 1 <= group <= NUM_SPACE_GROUPS:
                raise ValueError(
                    f"{self._option('space_group')}: {group} is not a space group; use 1..{NUM_SPACE_GROUPS}"
                )
        for name in ("num_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{self._option(name)}: {getattr(self, name)}: use at least 1")
        super().__post_init__()


def run_sample(args: SampleArguments) -> dict:
    torch.manual_seed(args.seed)
    model = load_model(args.model).eval()
    groups = draw_space_groups(args.num_samples, args.space_group, space_group_distribution(args.model), args.seed)
    crystals, logps, seconds = sample_crystals(
        model, groups, batch_size=args.batch_size, seed=args.seed, sampling_options=args
    )
    frame = crystals_to_frame(crystals, logps)  # the CIFs / extxyz hold the sampled tokens, not the 6-decimal strings
    meta = write_samples(frame, Path(args.output_dir), args.format, seconds, dataclasses.asdict(args), crystals)
    print(json.dumps({k: meta[k] for k in ("num_samples", "valid_tokens", "sampling_seconds", "files")}, indent=2))
    return meta
