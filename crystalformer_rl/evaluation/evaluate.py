"""Evaluate generated crystals: validity, uniqueness, novelty, stability and S.U.N., as a table, a summary and plots.

Definitions (CrystalFormer-RL's evaluation, after CDVAE and ``check_sun_materials``):

* **valid** = structure validity (distances ≥ 0.5 Å, volume ≥ 0.1 Å^3) and SMACT composition validity;
* **unique**: greedy de-duplication in input order with ``StructureMatcher()`` defaults, within a reduced formula;
* **novel**: no ``StructureMatcher`` match among reference structures (the training corpus) of the same reduced
  formula (optionally also the same space group);
* **stable**: ``E_hull <= ehull_threshold`` (0.1 eV/atom, inclusive as ``check_sun_materials``), on the relaxed
  structure when relaxation is on, else on the structure as sampled; unscorable structures are not stable;
* **S.U.N.**: stable, novel, and the first stable-and-novel member of its duplicate group. Each distinct stable
  novel crystal counts once even when its first occurrence is unstable, as the reference (which filters stable
  structures before de-duplicating) does.

Rates are fractions of *all* inputs, undecodable samples included. With relaxation, uniqueness and novelty are
judged on the relaxed structures (where relaxation succeeded), as the reference does.

Command line: ``crystalformer-rl evaluate samples.csv --output-dir eval/ [--relax]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from .io import LoadedCrystals, atomic_write_table, atomic_write_text, load_crystals, read_table
from .matching import ReferenceIndex, deduplicate, novelty, reduced_formula, space_group_number
from .stability import (
    EhullFn,
    RelaxFn,
    _ehull_reward_class,
    compute_ehull,
    default_ehull_fn,
    default_relax_fn,
    relax_structures,
)
from .validity import check_composition_validity, check_structure_validity


logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_REFERENCE",
    "EvaluationResult",
    "add_evaluate_arguments",
    "evaluate_crystals",
    "evaluate_structures",
    "run_evaluate",
    "summarize",
]

#: the project's training corpus, used for novelty when present and no reference is given on the command line
DEFAULT_REFERENCE = Path("data") / "corpus" / "train.parquet"


@dataclass
class EvaluationResult:
    """Per-structure table, summary, and the relaxed structures (``None`` where not relaxed)."""

    table: pd.DataFrame
    summary: dict[str, Any]
    relaxed: list[Structure | None] = field(default_factory=list)

    def save(
        self,
        output_dir: str | os.PathLike,
        formats: Sequence[str] = ("csv", "parquet"),
        plots: bool = True,
        label: str = "samples",
        compare: dict[str, Sequence[float | None]] | None = None,
    ) -> dict[str, Path]:
        """Write ``structures.{csv,parquet}``, ``summary.json`` and the plots (atomically); returns the paths."""
        from .plots import plot_ehull_histogram, plot_space_group_bars

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for fmt in formats:
            path = out / f"structures.{fmt}"
            try:
                paths[f"table_{fmt}"] = atomic_write_table(self.table, path)
            except Exception as exc:  # e.g. a mixed-type input column parquet cannot hold: keep the CSV
                logger.warning("could not write %s: %s", path, exc)
        paths["summary"] = atomic_write_text(
            json.dumps(_jsonable(self.summary), indent=2) + "\n", out / "summary.json"
        )
        if plots:
            ehull = self.table.get("e_hull_relaxed", self.table.get("e_hull"))
            if ehull is not None and ehull.notna().any():
                series = {label: ehull.tolist(), **(compare or {})}
                paths["ehull_histogram"] = plot_ehull_histogram(
                    series, out / "ehull_histogram.png", threshold=self.summary["settings"]["ehull_threshold"]
                )
            if self.table["space_group"].notna().any():
                paths["space_groups"] = plot_space_group_bars(
                    {label: self.table["space_group"].tolist()}, out / "space_groups.png"
                )
        return paths


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    if obj is pd.NA:
        return None
    return obj


def _count(series: pd.Series) -> int:
    return int(series.fillna(False).astype(bool).sum())


def summarize(table: pd.DataFrame, settings: dict[str, Any], sampling_seconds: float | None = None) -> dict[str, Any]:
    """Counts and fractions (of all rows) of a per-structure table, plus E_hull statistics and S.U.N. per second."""
    n = len(table)
    summary: dict[str, Any] = {"n_total": n, "n_built": int(table["error"].isna().sum())}
    for column in ("struct_valid", "comp_valid", "valid", "unique", "novel", "stable", "sun"):
        if column in table and table[column].notna().any():
            summary[f"n_{column}"] = _count(table[column])
            summary[f"frac_{column}"] = summary[f"n_{column}"] / n if n else None
        else:
            summary[f"n_{column}"] = None
            summary[f"frac_{column}"] = None
    if summary["n_stable"] is not None:
        summary["n_stable_unique"] = int((table["stable"].fillna(False) & table["unique"].fillna(False)).sum())
    ehull_column = "e_hull_relaxed" if "e_hull_relaxed" in table else "e_hull"
    if ehull_column in table:
        e = pd.to_numeric(table[ehull_column], errors="coerce").dropna()
        summary["ehull_column"] = ehull_column
        summary["n_ehull"] = int(e.size)
        summary["ehull_mean"] = float(e.mean()) if e.size else None
        summary["ehull_median"] = float(e.median()) if e.size else None
        summary["ehull_q10"] = float(e.quantile(0.1)) if e.size else None
    summary["sampling_seconds"] = sampling_seconds
    summary["sun_per_second"] = (
        summary["n_sun"] / sampling_seconds
        if summary["n_sun"] is not None and sampling_seconds is not None and sampling_seconds > 0
        else None
    )
    reasons: Counter = Counter()
    for column in ("error", "struct_reason", "comp_reason", "e_hull_reason", "relax_reason", "e_hull_relaxed_reason"):
        if column in table:
            reasons.update(f"{column}: {r}" for r in table[column].dropna())
    summary["top_failure_reasons"] = dict(reasons.most_common(10))
    summary["settings"] = settings
    return summary


def _as_reference(reference: Any, progress: bool) -> ReferenceIndex | None:
    if reference is None or isinstance(reference, ReferenceIndex):
        return reference
    if isinstance(reference, (str, os.PathLike)):
        return ReferenceIndex.from_file(reference, progress=progress)
    return ReferenceIndex.from_structures(reference)


def evaluate_structures(
    structures: Sequence[Structure | None] | LoadedCrystals,
    names: Sequence[str] | None = None,
    errors: Sequence[str | None] | None = None,
    extra: pd.DataFrame | None = None,
    reference: ReferenceIndex | Sequence[Structure] | str | os.PathLike | None = None,
    stability: bool = True,
    relax: bool = False,
    ehull_fn: EhullFn | None = None,
    relax_fn: RelaxFn | None = None,
    ehull_kwargs: dict[str, Any] | None = None,
    fmax: float = 0.1,
    steps: int = 500,
    ehull_threshold: float = 0.1,
    same_space_group: bool = False,
    symprec: float = 0.1,
    sampling_seconds: float | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate crystals (see the module docstring for the definitions); never raises on a bad structure.

    Args:
        structures: the crystals (``None`` for samples that could not be decoded), or a :class:`LoadedCrystals`.
        names, errors, extra: row names, why a ``None`` structure failed, extra columns copied into the table.
        reference: structures for novelty (a :class:`ReferenceIndex`, structures, or a table path); ``None``
            skips novelty (and therefore S.U.N.).
        stability: compute E_hull through ``ehull_fn`` (default: ``reward_models.EhullReward(**ehull_kwargs)``,
            e.g. ``{"calculator": "chgnet-r2scan", "hull": ReferenceHull(...)}``).
        relax: relax with ``relax_fn`` (default: the reward's energy model, FIRE, ``fmax``, ``steps``) and judge
            stability, uniqueness and novelty on the relaxed structures.
        ehull_threshold: stable means ``E_hull <= ehull_threshold`` eV/atom.
        symprec: spglib tolerance of the ``space_group`` column.
        sampling_seconds: wall time spent generating the samples, for S.U.N. per second.
    """
    t0 = time.perf_counter()
    if isinstance(structures, LoadedCrystals):
        loaded = structures
        names = names or loaded.names
        errors = errors or loaded.errors
        extra = extra if extra is not None else loaded.extra
        sampling_seconds = sampling_seconds if sampling_seconds is not None else loaded.sampling_seconds
        structures = loaded.structures
    structures = [s if isinstance(s, Structure) else None for s in structures]
    n = len(structures)
    names = list(names) if names is not None else [str(i) for i in range(n)]
    errors = list(errors) if errors is not None else [None if s is not None else "no structure" for s in structures]
    # Load models and the reference first: a wrong path or a missing model fails now, not after the relaxations.
    index = _as_reference(reference, progress)
    if stability and ehull_fn is None:
        ehull_fn = default_ehull_fn(**(ehull_kwargs or {}))
    if relax and relax_fn is None:
        relax_fn = default_relax_fn(fmax=fmax, steps=steps, ehull_fn=ehull_fn)

    rows: list[dict[str, Any]] = []
    for name, s, err in tqdm(
        zip(names, structures, errors), total=n, desc="validity", unit="crystal", disable=not progress
    ):
        row: dict[str, Any] = {"name": name, "error": err}
        if s is None:
            row.update(struct_valid=False, comp_valid=False, valid=False)
            rows.append(row)
            continue
        try:
            row["formula"] = reduced_formula(s)
        except Exception as exc:
            row["formula"] = None
            row["error"] = f"no composition: {exc}"
        row["num_atoms"] = len(s)
        row["space_group"] = space_group_number(s, symprec)
        try:
            row["struct_reason"] = check_structure_validity(s)
        except Exception as exc:
            row["struct_reason"] = f"validity check failed: {type(exc).__name__}: {exc}"
        row["comp_reason"] = check_composition_validity(s)
        row["struct_valid"] = row["struct_reason"] is None
        row["comp_valid"] = row["comp_reason"] is None
        row["valid"] = row["struct_valid"] and row["comp_valid"]
        rows.append(row)
    table = pd.DataFrame(
        rows,
        columns=[
            "name",
            "formula",
            "space_group",
            "num_atoms",
            "struct_valid",
            "comp_valid",
            "valid",
            "error",
            "struct_reason",
            "comp_reason",
        ],
    )
    table["space_group"] = table["space_group"].astype("Int64")
    table["num_atoms"] = table["num_atoms"].astype("Int64")

    # ------------------------------------------------------------------ stability
    relaxed: list[Structure | None] = [None] * n
    stable: list[bool | None] = [None] * n
    if stability or relax:
        if stability:
            values, reasons = compute_ehull(structures, ehull_fn, batch_size=batch_size, progress=progress)
            table["e_hull"] = pd.array(values, dtype="Float64")
            table["e_hull_reason"] = reasons
        if relax:
            relaxed, energies, relax_reasons = relax_structures(
                structures, relax_fn, fmax=fmax, steps=steps, progress=progress
            )
            table["energy_relaxed"] = pd.array(energies, dtype="Float64")
            table["relax_reason"] = relax_reasons
            table["relaxed_cif"] = [None if r is None else r.to(fmt="cif") for r in relaxed]
            if stability:
                values_r, reasons_r = compute_ehull(
                    relaxed, ehull_fn, batch_size=batch_size, progress=progress, desc="E_hull (relaxed)"
                )
                table["e_hull_relaxed"] = pd.array(values_r, dtype="Float64")
                table["e_hull_relaxed_reason"] = reasons_r
        if stability:
            used = table["e_hull_relaxed"] if relax else table["e_hull"]
            stable = [bool(v <= ehull_threshold) if v is not pd.NA else False for v in used]
            table["stable"] = pd.array(stable, dtype="boolean")

    # ------------------------------------------------------------------ uniqueness, novelty, S.U.N.
    matched = [r if r is not None else s for r, s in zip(relaxed, structures)] if relax else structures
    duplicate_of = deduplicate(matched, progress=progress)
    table["duplicate_of"] = pd.array(duplicate_of, dtype="Int64")
    table["unique"] = pd.array([d is not None and d == i for i, d in enumerate(duplicate_of)], dtype="boolean")
    novel: list[bool | None] | None = None
    if index is not None:
        novel = novelty(matched, index, same_space_group=same_space_group, progress=progress)
        table["novel"] = pd.array([bool(v) if v is not None else False for v in novel], dtype="boolean")
    if novel is not None and stability:
        sun = [False] * n
        counted: set[int] = set()
        for i in range(n):
            group = duplicate_of[i]
            if group is None or not (stable[i] and novel[i]) or group in counted:
                continue
            counted.add(group)
            sun[i] = True
        table["sun"] = pd.array(sun, dtype="boolean")

    if extra is not None and len(extra) == n:
        extra = extra.reset_index(drop=True)
        for column in extra.columns:
            target = column if column not in table.columns else f"input_{column}"
            table[target] = extra[column].values

    settings = {
        "ehull_threshold": ehull_threshold,
        "stable_rule": "e_hull <= ehull_threshold (eV/atom)",
        "stability": bool(stability),
        "relaxed": bool(relax),
        "fmax": fmax if relax else None,
        "steps": steps if relax else None,
        "reference": getattr(index, "name", None),
        "reference_size": len(index) if index is not None else None,
        "same_space_group": same_space_group,
        "space_group_symprec": symprec,
        "matcher": "pymatgen StructureMatcher() defaults (ltol 0.2, stol 0.3, angle_tol 5)",
    }
    summary = summarize(table, settings, sampling_seconds)
    summary["evaluation_seconds"] = time.perf_counter() - t0
    if index is None:
        summary["note"] = "no reference set: novelty and S.U.N. not computed"
    return EvaluationResult(table=table, summary=summary, relaxed=relaxed)


def evaluate_crystals(
    source: str | os.PathLike | Sequence[Structure],
    column: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> EvaluationResult:
    """Load crystals from ``source`` (see :func:`~crystalformer_rl.evaluation.io.load_crystals`) and evaluate them."""
    loaded = load_crystals(source, column=column, limit=limit, progress=progress)
    return evaluate_structures(loaded, progress=progress, **kwargs)


# ------------------------------------------------------------------------------------------------- CLI
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``crystalformer-rl evaluate``."""
    parser.add_argument(
        "input",
        help="crystals to evaluate: a folder of CIFs, an extxyz file, or a CSV/parquet/JSON table with a "
        "'cif', 'structure' or 'tokens' column",
    )
    parser.add_argument("--column", default=None, help="table column holding the crystals (default: auto)")
    parser.add_argument("--output-dir", "-o", default="evaluation", help="where the table, summary and plots go")
    parser.add_argument(
        "--reference",
        default=None,
        help=f"reference crystals for novelty (table or CIF folder; default: {DEFAULT_REFERENCE} when present)",
    )
    parser.add_argument("--reference-column", default=None, help="crystal column of the reference table")
    parser.add_argument("--no-novelty", action="store_true", help="skip novelty (and S.U.N.)")
    parser.add_argument(
        "--same-space-group", action="store_true", help="novelty compares only references of the same space group"
    )
    parser.add_argument("--no-stability", action="store_true", help="skip E_hull (and stability, S.U.N.)")
    parser.add_argument(
        "--calculator",
        default=None,
        help="energy model of EhullReward (e.g. chgnet-r2scan, chgnet-0.3.0, 7net-0, a matgl folder; default: its own)",
    )
    parser.add_argument(
        "--hull", default=None, help="reference hull file for EhullReward (default: its shipped MP hull)"
    )
    parser.add_argument(
        "--hull-energy-scale", default="gga_mp2020", help="energy scale of --hull (r2scan, gga_mp2020, ...)"
    )
    parser.add_argument("--relax", action="store_true", help="relax with the MLIP before judging stability")
    parser.add_argument("--fmax", type=float, default=0.1, help="relaxation force threshold (eV/Å)")
    parser.add_argument("--steps", type=int, default=500, help="maximum relaxation steps")
    parser.add_argument("--ehull-threshold", type=float, default=0.1, help="stable: E_hull <= this (eV/atom)")
    parser.add_argument(
        "--sampling-seconds",
        type=float,
        default=None,
        help="wall time spent sampling, for S.U.N. per second (default: from the input's metadata if any)",
    )
    parser.add_argument("--symprec", type=float, default=0.1, help="spglib tolerance of the space-group column")
    parser.add_argument("--batch-size", type=int, default=64, help="structures per E_hull call")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N crystals")
    parser.add_argument("--label", default=None, help="name of this model in the plots (default: input name)")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=TABLE",
        help="overlay the E_hull histogram of another evaluation's structures.csv/parquet (repeatable)",
    )
    parser.add_argument(
        "--scatter",
        nargs=2,
        metavar=("X", "Y"),
        default=None,
        help="also plot a scatter of two numeric columns of the table (e.g. properties carried by the input)",
    )
    parser.add_argument(
        "--format", choices=("csv", "parquet", "both"), default="both", help="per-structure table format"
    )
    parser.add_argument("--no-plots", action="store_true", help="write no figures")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


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


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``crystalformer-rl evaluate``: writes the table, ``summary.json`` and plots; returns the summary."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.no_progress
    reference = None
    if not args.no_novelty:
        if args.reference is not None:
            reference = ReferenceIndex.from_file(args.reference, column=args.reference_column, progress=progress)
        elif DEFAULT_REFERENCE.is_file():
            logger.info("novelty against %s", DEFAULT_REFERENCE)
            reference = ReferenceIndex.from_file(DEFAULT_REFERENCE, progress=progress)
        else:
            logger.warning("no --reference and no %s: novelty and S.U.N. are skipped", DEFAULT_REFERENCE)
    stability = not args.no_stability
    if stability:
        try:
            _ehull_reward_class()
        except ImportError as exc:
            raise SystemExit(
                f"E_hull needs crystalformer_rl.reward_models.EhullReward ({exc}); or pass --no-stability"
            )

    ehull_kwargs: dict[str, Any] = {}
    if stability and args.calculator:
        ehull_kwargs["calculator"] = args.calculator
    if stability and args.hull:
        from ..reward_models.hull import ReferenceHull

        ehull_kwargs["hull"] = ReferenceHull.from_file(args.hull, energy_scale=args.hull_energy_scale)

    result = evaluate_crystals(
        args.input,
        ehull_kwargs=ehull_kwargs,
        column=args.column,
        limit=args.limit,
        progress=progress,
        reference=reference,
        stability=stability,
        relax=args.relax,
        fmax=args.fmax,
        steps=args.steps,
        ehull_threshold=args.ehull_threshold,
        same_space_group=args.same_space_group,
        symprec=args.symprec,
        sampling_seconds=args.sampling_seconds,
        batch_size=args.batch_size,
    )
    result.summary["input"] = str(args.input)
    label = args.label or Path(args.input).name
    formats = ("csv", "parquet") if args.format == "both" else (args.format,)
    paths = result.save(
        args.output_dir,
        formats=formats,
        plots=not args.no_plots,
        label=label,
        compare=_compare_series(args.compare) if args.compare else None,
    )
    if args.scatter and not args.no_plots:
        from .plots import plot_property_scatter

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
    if s.get("sun_per_second") is not None:
        lines.append(f"  S.U.N./s     {s['sun_per_second']:.4g}")
    lines.append("wrote " + ", ".join(str(p) for p in paths.values()))
    print("\n".join(lines))
    return s
