"""``crystalformer-rl prepare-data``: tokenize a CIF dataset into token shards (the library behind it is
:mod:`crystalformer_rl.data.prepare`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..crystallography import DEFAULT_N_MAX
from ..data.prepare import prepare_data
from ..errors import UsageError
from ..materials.structures import check_structure
from ..tokenization import CrystalTokenizer
from ..utils import is_hub_repo_id
from . import naming_input
from .outputs import PREPARE_OUTPUTS, check_output_dir
from .parser import CommandArguments


@dataclass
class PrepareDataArguments(CommandArguments):
    """The options of ``crystalformer-rl prepare-data``; ``source`` and ``output_dir`` can also be given first,
    positionally."""

    positionals = ("source", "output_dir")
    ranges = {"num_proc": (1, True), "shard_size": (1, True), "limit": (1, True), "n_max": (2, True)}

    source: str = field(
        metadata={"help": "Hub dataset id (e.g. zdcao/alex-20) or a local CSV / parquet / JSON file or folder."}
    )
    output_dir: str = field(metadata={"help": "Folder for the token shards, failures.csv and summary.json."})
    split: str = field(default="train", metadata={"help": "Dataset split for Hub datasets."})
    streaming: bool = field(default=False, metadata={"help": "Stream rows instead of downloading first."})
    num_proc: int = field(default=max(1, os.cpu_count() or 1), metadata={"help": "Worker processes."})
    shard_size: int = field(default=2000, metadata={"help": "Rows per output shard (the resume unit)."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N rows."})
    n_max: int = field(default=DEFAULT_N_MAX, metadata={"help": "Maximum number of sites + 1 (reference: 21)."})
    structure: bool = field(
        default=True, metadata={"help": "Copy the structure column into the shards (--no_structure: do not)."}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue an interrupted run in output_dir (the same arguments; finished shards are kept)."},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an earlier run in output_dir (its shards and reports are removed)."}
    )


TABLE_SUFFIXES = (".csv", ".parquet", ".json", ".jsonl", ".gz", ".cif", ".zip", ".bz2", ".xz")


def run_prepare_data(args: PrepareDataArguments) -> dict[str, Any]:
    source = Path(args.source)
    if not source.exists() and (
        not is_hub_repo_id(args.source) or args.source.startswith(".") or source.suffix.lower() in TABLE_SUFFIXES
    ):
        raise UsageError(
            f"source {args.source}: no such file or folder (a local path: check its spelling; a Hub dataset id "
            "has the form owner/name)"
        )
    check_output_dir(
        args.output_dir,
        "output_dir",
        PREPARE_OUTPUTS,
        overwrite=args.overwrite,
        resume=args.resume,
        resume_flag="--resume",
    )
    with naming_input("source", args.source):
        summary = prepare_data(
            args.source,
            args.output_dir,
            split=args.split,
            streaming=args.streaming,
            tokenizer=CrystalTokenizer(n_max=args.n_max),
            num_proc=args.num_proc,
            shard_size=args.shard_size,
            limit=args.limit,
            keep_structure=args.structure,
            check=check_structure,  # the checks of evaluate's E_hull: overlapping atoms, absurd cells, disorder
        )
    print(json.dumps(summary, indent=2))
    return summary
