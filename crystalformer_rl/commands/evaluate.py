"""``crystalformer-rl evaluate``: validity, uniqueness, novelty, stability and S.U.N. of crystals, as a table, a
summary and plots. The definitions and the library behind it are :mod:`crystalformer_rl.evaluation`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from ..errors import UsageError
from ..evaluation.evaluate import EvaluationOptions, _scaled_sampling_seconds, default_reference, evaluate_structures
from ..evaluation.relaxed_chunks import RelaxedChunks
from ..materials.ehull import EhullCalculator
from ..materials.hull import ReferenceHull
from ..materials.io import LoadedCrystals, load_crystals, read_table
from ..materials.matching import ReferenceIndex
from ..utils import content_sha256
from . import naming_input
from .outputs import EVALUATE_OUTPUTS, check_output_dir, remove_outputs
from .parser import CommandArguments


logger = logging.getLogger(__name__)


@dataclass
class EvaluateArguments(CommandArguments):
    """The options of ``crystalformer-rl evaluate``; ``input`` can also be given first, positionally."""

    positionals = ("input",)
    ranges = {
        "batch_size": (1, True),
        "limit": (1, True),
        "symprec": (0, False),
        "fmax": (0, False),
        "steps": (1, True),
        "relax_chunk_size": (1, True),
        "sampling_seconds": (0, False),
    }

    input: str = field(
        metadata={
            "help": "Crystals to evaluate: a folder of CIFs, an extxyz file, or a CSV/parquet/JSON table with a "
            "'cif', 'structure' or 'tokens' column (e.g. the samples.csv of `crystalformer-rl sample`)."
        }
    )
    column: str | None = field(default=None, metadata={"help": "Table column holding the crystals (default: auto)."})
    output_dir: str = field(
        default="evaluation", metadata={"help": "Where the table, summary and plots go.", "aliases": ["-o"]}
    )
    reference: str | None = field(
        default=None,
        metadata={
            "help": "Reference crystals for novelty: a table (CSV/parquet/JSON with a cif, structure or tokens "
            "column, or token arrays), a folder of CIFs, or a datasets Hub id (owner/name[:split]); default: the "
            "sampling model's training crystals (a model folder's reference_corpus.*, the shipped corpus for the "
            "embedded model)."
        },
    )
    reference_column: str | None = field(default=None, metadata={"help": "Crystal column of the reference table."})
    novelty: bool = field(default=True, metadata={"help": "Judge novelty (--no_novelty: skip it, and S.U.N.)."})
    same_space_group: bool = field(
        default=False, metadata={"help": "Novelty compares only references of the same space group."}
    )
    stability: bool = field(
        default=True, metadata={"help": "Compute E_hull (--no_stability: skip it, stability and S.U.N.)."}
    )
    calculator: str | None = field(
        default=None,
        metadata={
            "help": "Energy model of the E_hull calculator (e.g. chgnet-r2scan, chgnet-0.3.0, 7net-0, a matgl folder; "
            "default: its own)."
        },
    )
    hull: str | None = field(
        default=None, metadata={"help": "Reference hull file of the E_hull calculator (default: the shipped MP hull)."}
    )
    hull_energy_scale: str = field(
        default="gga_mp2020", metadata={"help": "Energy scale of --hull (r2scan, gga_mp2020, ...)."}
    )
    relax: bool = field(default=False, metadata={"help": "Relax with the MLIP before judging stability."})
    fmax: float = field(default=0.1, metadata={"help": "Relaxation force threshold (eV/Å)."})
    steps: int = field(default=500, metadata={"help": "Maximum relaxation steps."})
    relax_primitive: bool = field(
        default=False,
        metadata={
            "help": "Relax each crystal's primitive cell instead of the conventional cell it was sampled in (the "
            "reference's mlff_relax.py option): a centred cell has 2-4x the atoms, so this is faster; relaxed_cif "
            "is then the primitive cell."
        },
    )
    relax_screen: float | None = field(
        default=None,
        metadata={
            "help": "Relaxation screen (eV/atom): a crystal whose unrelaxed E_hull is above this is not relaxed and "
            "counts as not stable after relaxation (relax_reason 'screened: ...'); default: off, every crystal "
            "relaxed, the reference's rule. The screen changes verdicts wherever a crystal above it would have "
            "relaxed to stable. Measured on the default model's first 300 samples, all fully relaxed "
            "(docs/benchmarks/relax_screen_base300.json): at EHULL 1, 91.3 %% of the per-crystal stable verdicts "
            "agree with full relaxation and 79 %% of the FIRE steps are saved; at EHULL 5, 96.0 %% and 59 %%. A "
            "crystal at 10.2 eV/atom as sampled ended stable, so no EHULL keeps 99.5 %% and the screen is off by "
            "default. Needs a value "
            ">= --ehull_threshold.",
            "metavar": "EHULL",
        },
    )
    relax_chunk_size: int = field(
        default=64,
        metadata={
            "help": "Crystals relaxed together (in lockstep) and written together to OUTPUT_DIR/relaxed/ as each "
            "chunk finishes, so Ctrl-C keeps the finished chunks and --resume relaxes only the rest."
        },
    )
    ehull_threshold: float = field(default=0.1, metadata={"help": "Stable: E_hull <= this (eV/atom)."})
    sampling_seconds: float | None = field(
        default=None,
        metadata={
            "help": "Wall time spent sampling, for S.U.N. per second (default: from the input's metadata if any)."
        },
    )
    symprec: float = field(default=0.1, metadata={"help": "spglib tolerance of the space-group column."})
    space_group_column: str | None = field(
        default=None,
        metadata={
            "help": "Column of the per-space-group table space_groups.csv (default: G, the space group the sampler "
            "was asked for, when the input has it, else space_group, detected by spglib)."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Structures per E_hull call."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N crystals."})
    label: str | None = field(
        default=None, metadata={"help": "Name of this model in the plots (default: input name)."}
    )
    compare: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Overlay the E_hull histogram of other evaluations: LABEL=structures.csv/parquet (repeatable).",
            "action": "extend",
            "metavar": "LABEL=TABLE",
        },
    )
    scatter: list[str] | None = field(
        default=None,
        metadata={
            "help": "Also plot a scatter of two numeric columns X Y of the table (e.g. properties carried by the "
            "input)."
        },
    )
    format: Literal["csv", "parquet", "both"] = field(default="both", metadata={"help": "Per-structure table format."})
    plots: bool = field(default=True, metadata={"help": "Write the figures (--no_plots: none)."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace an earlier evaluation in --output_dir: its table, summary and plots are removed first "
            "(without it such a folder is refused)."
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Continue an interrupted --relax evaluation in --output_dir: the crystals relaxed in its "
            "relaxed/ chunks are not relaxed again (the same input and relaxation settings are required), the "
            "rest is relaxed and the table, summary and plots are written anew."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars (--no_progress: hide them)."})

    def __post_init__(self):
        super().__post_init__()
        if self.scatter is not None and len(self.scatter) != 2:
            raise ValueError(f"{self._option('scatter')}: expected 2 arguments (X Y), got {len(self.scatter)}")
        if self.relax_screen is not None:
            if not (self.relax and self.stability):
                raise ValueError(f"{self._option('relax_screen')}: needs --relax and stability (no --no_stability)")
            if self.relax_screen < self.ehull_threshold:
                raise ValueError(
                    f"{self._option('relax_screen')}: {self.relax_screen}: use at least --ehull_threshold "
                    f"({self.ehull_threshold}): a crystal stable as sampled must not be screened out"
                )
        if self.resume and not self.relax:
            raise ValueError(f"{self._option('resume')}: continues an interrupted --relax evaluation; add --relax")
        if self.resume and self.overwrite:
            raise ValueError(
                f"{self._option('resume')}: --resume keeps the earlier relaxations, --overwrite removes them; pass one"
            )

    def evaluation_options(self) -> EvaluationOptions:
        """The :class:`EvaluationOptions` these arguments set (fields of the same names)."""
        return EvaluationOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EvaluationOptions)})


def _check_inputs(args: EvaluateArguments) -> None:
    """Fail on a missing input before anything slow runs (loading models, reading the reference)."""
    if not Path(args.input).exists():
        raise UsageError(
            f"input {args.input}: no such file or folder; pass the samples.csv written by `crystalformer-rl sample`, "
            "a folder of CIFs, an extxyz file or a table with a cif/structure/tokens column"
        )
    if args.hull and not Path(args.hull).is_file():
        raise UsageError(f"--hull {args.hull}: no such file; pass a hull table or omit --hull for the shipped MP hull")
    for spec in args.compare:
        path = spec.partition("=")[2] or spec
        if not Path(path).is_file():
            raise UsageError(f"--compare {spec}: no such file; pass LABEL=structures.csv of an earlier evaluation")


def _compare_series(specs: Sequence[str]) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).parent.name or Path(spec).stem, spec
        frame, _ = read_table(path)
        column = next((c for c in ("e_hull_relaxed", "e_hull") if c in frame.columns), None)
        if column is None:
            raise ValueError(f"{path}: no e_hull column to compare")
        out[label] = pd.to_numeric(frame[column], errors="coerce").tolist()
    return out


def _sampling_seconds(args: EvaluateArguments, loaded: LoadedCrystals) -> tuple[float | None, str | None]:
    """Sampling wall time for S.U.N. per second, and where it came from.

    With ``--limit`` the recorded time of the whole run is scaled to the crystals evaluated, so that the rate
    stays the rate of the sampler (``num_samples`` in the metadata says how many the time was spent on).
    """
    if args.sampling_seconds is not None:
        return args.sampling_seconds, "--sampling_seconds"
    return _scaled_sampling_seconds(loaded, args.limit)


def run_evaluate(args: EvaluateArguments) -> dict[str, Any]:
    """Run ``crystalformer-rl evaluate``: writes the table, ``summary.json`` and plots; returns the summary.

    With ``--relax`` each chunk of relaxations is written to ``OUTPUT_DIR/relaxed/`` as it finishes, so Ctrl-C
    (one line, exit status 130, through the command line's one error path) keeps them and ``--resume`` relaxes only
    the crystals they do not hold."""
    _check_inputs(args)
    earlier = check_output_dir(
        args.output_dir,
        "--output_dir",
        EVALUATE_OUTPUTS,
        overwrite=args.overwrite,
        resume=args.resume,
        resume_flag="--resume" if args.relax else None,
    )
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress, stability = args.progress, args.stability
    reference = None
    if args.novelty and args.reference is not None:  # a wrong reference fails before the crystals are read
        with naming_input("--reference", args.reference):
            reference = ReferenceIndex.from_file(args.reference, column=args.reference_column, progress=progress)
    with naming_input("input", args.input if args.column is None else f"{args.input} --column {args.column}"):
        loaded = load_crystals(args.input, column=args.column, limit=args.limit, progress=progress)
    if len(loaded) == 0:
        raise UsageError(f"input {args.input}: no crystals to evaluate (an empty table or folder)")
    origin = args.reference
    if args.novelty and reference is None:
        choice = default_reference(loaded.metadata)
        origin = choice.why
        if choice.path is None:
            logger.warning("no reference: %s; novelty and S.U.N. are skipped", choice.why)
        else:
            (logger.warning if choice.fallback else logger.info)("novelty against %s", choice.why)
            reference = ReferenceIndex.from_file(choice.path, progress=progress)

    ehull = None
    if stability and (args.calculator or args.hull):
        hull = ReferenceHull.from_file(args.hull, energy_scale=args.hull_energy_scale) if args.hull else None
        with naming_input("--calculator", args.calculator):
            ehull = EhullCalculator(args.calculator, hull)

    sampling_seconds, seconds_origin = _sampling_seconds(args, loaded)
    store = None
    if args.relax:  # each finished chunk of relaxations is written at once: Ctrl-C keeps them, --resume reuses them
        potential = {"calculator": args.calculator, "hull": args.hull, "hull_energy_scale": args.hull_energy_scale}
        if args.hull:  # its content too: a hull file replaced under the same name must not mix verdicts
            potential["hull_sha256"] = content_sha256(args.hull)
        store = RelaxedChunks(Path(args.output_dir) / "relaxed", potential, resume=args.resume)
    try:
        result = evaluate_structures(
            loaded,
            reference=reference,
            options=args.evaluation_options(),
            ehull=ehull,
            relax_store=store,
            sampling_seconds=sampling_seconds,
            progress=progress,
        )
    except UsageError as exc:  # a relaxed/ folder of another input or other settings
        if not args.resume:
            raise
        raise UsageError(f"--resume: {exc}") from exc
    remove_outputs([p for p in earlier if p.name != "relaxed"])  # a resumed run's table, summary and plots are new
    result.summary["input"] = str(args.input)
    result.summary["sampling_seconds_origin"] = seconds_origin
    result.summary["settings"]["reference_origin"] = origin
    label = args.label or Path(args.input).name
    formats = ("csv", "parquet") if args.format == "both" else (args.format,)
    paths = result.save(
        args.output_dir,
        formats=formats,
        plots=args.plots,
        label=label,
        compare=_compare_series(args.compare) if args.compare else None,
    )
    if args.scatter and args.plots:
        from ..evaluation.plots import plot_property_scatter

        x, y = args.scatter
        missing = [c for c in (x, y) if c not in result.table.columns]
        if missing:
            logger.warning("--scatter: no column(s) %s in the table; scatter skipped", missing)
        else:
            xs = pd.to_numeric(result.table[x], errors="coerce").tolist()
            ys = pd.to_numeric(result.table[y], errors="coerce").tolist()
            paths["scatter"] = plot_property_scatter(
                xs, ys, Path(args.output_dir) / f"scatter_{x}_{y}.png", xlabel=x, ylabel=y
            )
    s = result.summary
    lines = [f"{s['n_total']} crystals ({s['n_built']} built)"]
    for key in ("valid", "struct_valid", "comp_valid", "unique", "novel", "stable", "sun"):
        if s[f"n_{key}"] is not None:
            lines.append(f"  {key:<13}{s[f'n_{key}']:>7}  ({100 * s[f'frac_{key}']:.1f} %)")
    if s.get("n_relax_screened") is not None and s["settings"].get("relax_screen") is not None:
        lines.append(
            f"  screened (unrelaxed E_hull > {s['settings']['relax_screen']:g}, not relaxed, not stable): "
            f"{s['n_relax_screened']}"
        )
    if s.get("n_relaxed_earlier"):
        lines.append(f"  relaxed by the earlier run (resumed): {s['n_relaxed_earlier']}")
    if s.get("n_novelty_undecided"):
        lines.append(f"  novelty undecided (counted as not novel): {s['n_novelty_undecided']}")
    for rule in ("unrelaxed", "relaxed"):
        if s.get(f"n_sun_{rule}") is not None:
            per_second = s.get(f"sun_{rule}_per_second")
            rate = f", {per_second:.4g} /s of sampling" if per_second is not None else ""
            lines.append(f"  S.U.N. ({rule}) {s[f'n_sun_{rule}']:>4}  ({100 * s[f'frac_sun_{rule}']:.1f} %{rate})")
    lines.append("wrote " + ", ".join(str(p) for p in paths.values()))
    print("\n".join(lines))
    return s
