"""``crystalformer-rl benchmark``: the MP-20 table's metrics (CDVAE's validity, coverage and Wasserstein distances
against MP-20's test split) and, beside them, this project's S.U.N., uniqueness and novelty (``evaluate``). The
definitions and the library behind it are :mod:`crystalformer_rl.evaluation.mp20`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import UsageError
from ..utils import atomic_write_text
from . import naming_input
from .outputs import check_output_dir
from .parser import CommandArguments


BENCHMARK_OUTPUTS = ("benchmark_mp20.json", "benchmark_mp20.md")


@dataclass
class BenchmarkArguments(CommandArguments):
    """The options of ``crystalformer-rl benchmark``; ``input`` can also be given first, positionally."""

    positionals = ("input",)
    ranges = {"num_proc": (1, True), "wasserstein_samples": (1, True), "limit": (1, True)}

    input: str = field(
        metadata={
            "help": "Generated crystals: the samples.csv of `crystalformer-rl sample` (10,000 for the published "
            "table), a folder of CIFs, an extxyz file or a table with a cif/structure/tokens column. A sample that "
            "did not decode counts as invalid."
        }
    )
    benchmark: Literal["mp20"] = field(default="mp20", metadata={"help": "Which benchmark (its test split)."})
    column: str | None = field(default=None, metadata={"help": "Table column holding the crystals (default: auto)."})
    output_dir: str = field(
        default="benchmark",
        metadata={
            "help": "Where benchmark_mp20.json / .md, the fingerprints (resumable) and the evaluation go.",
            "aliases": ["-o"],
        },
    )
    num_proc: int | None = field(
        default=None, metadata={"help": "Processes for the fingerprints (default: all cores)."}
    )
    wasserstein_samples: int = field(
        default=1000, metadata={"help": "Valid samples drawn (seeded) for w(ρ) and w(#elem), as CDVAE."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of that draw."})
    fingerprint_time_limit: float = field(
        default=120.0,
        metadata={
            "help": "Seconds one crystal's CrystalNN fingerprint may take; past it the crystal has no fingerprint "
            "(as a fingerprint that fails in CDVAE) and is counted in fingerprint_timeouts. A generated cell "
            "with coplanar vectors took over an hour. 0: no limit (CDVAE's own behaviour)."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Use only the first N crystals."})
    evaluate: bool = field(
        default=True,
        metadata={
            "help": "Also run `evaluate` (unrelaxed E_hull, S.U.N., uniqueness, novelty against the model's training "
            "crystals) into OUTPUT_DIR/evaluation (--no_evaluate: skip it)."
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an earlier benchmark in --output_dir (its fingerprints too)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars (--no_progress: hide them)."})


def run_benchmark(args: BenchmarkArguments) -> dict[str, Any]:
    """Run ``crystalformer-rl benchmark``: writes ``benchmark_mp20.json`` and a markdown table; returns the metrics.
    Rerunning the same command resumes: finished fingerprint chunks are kept."""
    from ..evaluation.mp20 import benchmark_metrics, featurize, format_table, load_mp20_test_features, validity
    from ..materials.io import load_crystals

    if args.fingerprint_time_limit < 0:
        raise UsageError(f"--fingerprint_time_limit {args.fingerprint_time_limit}: use seconds >= 0 (0: no limit)")
    if not Path(args.input).exists():
        raise UsageError(
            f"input {args.input}: no such file or folder; pass the samples.csv of `crystalformer-rl sample`"
        )
    out = Path(args.output_dir)
    patterns = (*BENCHMARK_OUTPUTS, "fingerprints", "evaluation")
    check_output_dir(out, "--output_dir", patterns, overwrite=args.overwrite, resume=True)
    reference = load_mp20_test_features()
    with naming_input("input", args.input if args.column is None else f"{args.input} --column {args.column}"):
        loaded = load_crystals(args.input, column=args.column, limit=args.limit, progress=args.progress)
    if len(loaded) == 0:
        raise UsageError(f"input {args.input}: no crystals (an empty table or folder)")
    with naming_input("--output_dir", args.output_dir):
        tic = time.perf_counter()
        features = featurize(
            loaded.structures,
            args.num_proc,
            cache_dir=out / "fingerprints",
            progress=args.progress,
            time_limit=args.fingerprint_time_limit,
        )
        seconds = time.perf_counter() - tic
    features.struct_valid, features.comp_valid = validity(loaded.structures)  # the rules of now, not the cache's
    metrics = benchmark_metrics(features, reference, n_wasserstein=args.wasserstein_samples, seed=args.seed)
    metrics.update(
        {
            "benchmark": "MP-20 (CDVAE's test split, 9,046 crystals)",
            "input": str(args.input),
            "fingerprint_seconds": round(seconds, 1),
            "fingerprint_time_limit": args.fingerprint_time_limit,
            "num_proc": args.num_proc,
            "w(E)": "not computed: CDVAE's formation-energy model is a checkpoint this package cannot load",
        }
    )
    if args.evaluate:
        from .evaluate import EvaluateArguments, run_evaluate

        summary = run_evaluate(
            EvaluateArguments(
                input=args.input,
                column=args.column,
                output_dir=str(out / "evaluation"),
                limit=args.limit,
                progress=args.progress,
                overwrite=True,
            )
        )
        for key in ("unique", "novel", "stable", "sun"):
            fraction = summary.get(f"frac_{key}")
            metrics[key] = None if fraction is None else 100 * fraction
        metrics["evaluation"] = str(out / "evaluation" / "summary.json")
    label = Path(args.input).parent.name or Path(args.input).stem
    table = format_table({label: metrics})
    atomic_write_text(json.dumps(metrics, indent=2), out / "benchmark_mp20.json")
    atomic_write_text(table + "\n", out / "benchmark_mp20.md")
    print(table)
    return metrics
