"""Evaluate generated crystals: validity, uniqueness, novelty, stability and S.U.N., as a table, a summary and plots.

Definitions (CrystalFormer-RL's evaluation, after CDVAE and ``check_sun_materials``; ``docs/evaluation.md`` has the
full account):

* **valid** = structure validity (distances ≥ 0.5 Å, volume ≥ 0.1 Å^3) and SMACT composition validity;
* **unique**: greedy de-duplication in input order with ``StructureMatcher()`` defaults, within a reduced formula;
* **novel**: no reference structure (the training corpus) shares the reduced formula, or none of those that do
  matches under ``StructureMatcher`` (optionally only those of the same space group); a test the matcher could
  not finish is *undecided* and counts as not novel (``novelty_error``, ``n_novelty_undecided``);
* **stable**: ``E_hull <= ehull_threshold`` (0.1 eV/atom, inclusive as ``check_sun_materials``); unscorable
  structures are not stable. ``stable_unrelaxed`` judges the structure as sampled (``e_hull``), ``stable_relaxed``
  the MLIP-relaxed one (``e_hull_relaxed``, with relaxation). With the relaxation screen (``relax_screen``, off by
  default) a crystal whose unrelaxed E_hull is above it is not relaxed and not stable (``relax_screened``);
* **S.U.N.**: stable, novel, and the first stable-and-novel member of its duplicate group. Each distinct stable
  novel crystal counts once even when its first occurrence is unstable, as the reference (which filters stable
  structures before de-duplicating) does. Two rules are reported:

  - ``sun_unrelaxed``: everything judged on the structures as sampled (the E_hull the RL reward sees);
  - ``sun_relaxed`` (with relaxation): the reference's ``check_sun_materials`` rule: relaxed E_hull, uniqueness
    and novelty of the relaxed structures (the structure as sampled where relaxation failed).

  ``stable``/``unique``/``novel``/``sun`` are the relaxed rule's columns with relaxation and the unrelaxed rule's
  without; with relaxation the unrelaxed rule's own are ``unique_unrelaxed``/``novel_unrelaxed``.

Rates are fractions of *all* inputs, undecodable samples included. :func:`space_group_table` breaks them down by
space group (the one the sampler was asked for when the input says, paper Fig. 4), and S.U.N. per second divides
the S.U.N. count by the sampling wall time recorded in the samples' metadata.

The reference defaults to the training crystals of the model that sampled the input (named in its metadata, e.g.
``samples.csv.meta.json``): a model folder's own ``reference_corpus.*``, and for the embedded model the corpus
shipped with the package (:data:`DEFAULT_REFERENCE`); crystals of unknown origin are compared with the latter.

Relaxations are made chunk by chunk (:func:`~crystalformer_rl.materials.relaxation.relax_in_chunks`); with a
``relax_store`` (:class:`~.relaxed_chunks.RelaxedChunks`) each chunk is written as it finishes and a resumed
evaluation relaxes only the crystals it does not hold.

Command line: ``crystalformer-rl evaluate samples.csv --output_dir eval/ [--relax [--resume] [--relax_screen E]]``
(:mod:`crystalformer_rl.commands.evaluate`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from ..materials.ehull import EhullCalculator, EhullFn, compute_ehull, default_ehull_fn, default_relax_fn
from ..materials.io import LoadedCrystals, load_crystals
from ..materials.matching import ReferenceIndex, deduplicate, novelty_checks, reduced_formula, space_group_number
from ..materials.relaxation import RelaxFn, relax_in_chunks, unrelaxable_reason
from ..materials.validity import check_composition_validity, check_species, check_structure_validity
from ..pretrained import SHIPPED_REFERENCE, model_reference
from ..utils import atomic_write_table, atomic_write_text
from .relaxed_chunks import RELAXED_COLUMNS, RelaxedChunks, crystals_fingerprint


logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_REFERENCE",
    "EvaluationOptions",
    "EvaluationResult",
    "ReferenceChoice",
    "default_reference",
    "evaluate_crystals",
    "evaluate_structures",
    "space_group_table",
    "summarize",
]

#: the embedded model's training corpus, shipped with the package: novelty when no reference is given
DEFAULT_REFERENCE = SHIPPED_REFERENCE

#: the two S.U.N. rules of the table and summary (``docs/evaluation.md``); ``sun`` is the relaxed one when relaxed
SUN_RULES = {
    "sun_unrelaxed": "E_hull of the structure as sampled <= ehull_threshold; unique and novel as sampled",
    "sun_relaxed": (
        "check_sun_materials: E_hull of the relaxed structure <= ehull_threshold; unique and novel after relaxation"
    ),
}
#: boolean columns the summary counts (n_X, frac_X of all rows); the last two only exist with relaxation
SUMMARY_FLAGS = (
    "struct_valid",
    "comp_valid",
    "valid",
    "unique",
    "novel",
    "stable",
    "sun",
    "stable_unrelaxed",
    "sun_unrelaxed",
    "stable_relaxed",
    "sun_relaxed",
)
_RELAX_ONLY_FLAGS = ("unique_unrelaxed", "novel_unrelaxed")
#: boolean columns broken down by space group
SPACE_GROUP_FLAGS = (
    "valid",
    "unique",
    "novel",
    "stable_unrelaxed",
    "stable_relaxed",
    "sun_unrelaxed",
    "sun_relaxed",
)


@dataclass
class EvaluationResult:
    """Per-structure table, summary, and the relaxed structures (``None`` where not relaxed)."""

    table: pd.DataFrame
    summary: dict[str, Any]
    relaxed: list[Structure | None] = field(default_factory=list)
    by_space_group: pd.DataFrame | None = None  # :func:`space_group_table` of ``table``

    def save(
        self,
        output_dir: str | os.PathLike,
        formats: Sequence[str] = ("csv", "parquet"),
        plots: bool = True,
        label: str = "samples",
        compare: dict[str, Sequence[float | None]] | None = None,
    ) -> dict[str, Path]:
        """Write ``structures.{csv,parquet}``, ``space_groups.csv``, ``summary.json`` and the plots (atomically).

        Returns the paths written.
        """
        from .plots import plot_ehull_histogram, plot_space_group_bars, plot_space_group_rates

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for fmt in formats:
            path = out / f"structures.{fmt}"
            try:
                paths[f"table_{fmt}"] = atomic_write_table(self.table, path)
            except Exception as exc:  # e.g. a mixed-type input column parquet cannot hold: keep the CSV
                logger.warning("could not write %s: %s", path, exc)
        if self.by_space_group is not None:
            paths["space_group_table"] = atomic_write_table(self.by_space_group, out / "space_groups.csv")
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
            frame = self.by_space_group
            if frame is not None and frame["space_group"].notna().any():
                rates = _space_group_rates(frame)
                by = self.summary.get("space_group_column", "space_group")
                paths["space_group_rates"] = plot_space_group_rates(
                    frame,
                    out / "space_group_rates.png",
                    columns=rates,
                    title=f"{label}: by {'space group asked for' if by != 'space_group' else 'space group'}",
                )
        return paths


#: a screened crystal's reason names its own E_hull; the summary counts them under one reason
_SCREENED = re.compile(r"^screened: unrelaxed E_hull \S+ >")


def _space_group_rates(frame: pd.DataFrame) -> list[str]:
    """The rates the per-space-group bars show: S.U.N. if computed, else stability, else validity."""
    for family in ("sun", "stable"):
        columns = [f"frac_{family}_{rule}" for rule in ("unrelaxed", "relaxed") if f"frac_{family}_{rule}" in frame]
        if columns:
            return columns
    return ["frac_valid"]


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


def _ehull_stats(table: pd.DataFrame, column: str, prefix: str) -> dict[str, Any]:
    e = pd.to_numeric(table[column], errors="coerce").dropna()
    return {
        f"n_{prefix}": int(e.size),
        f"{prefix}_mean": float(e.mean()) if e.size else None,
        f"{prefix}_median": float(e.median()) if e.size else None,
        f"{prefix}_q10": float(e.quantile(0.1)) if e.size else None,
    }


def summarize(table: pd.DataFrame, settings: dict[str, Any], sampling_seconds: float | None = None) -> dict[str, Any]:
    """Counts and fractions (of all rows) of a per-structure table, plus E_hull statistics and S.U.N. per second.

    Keys without a rule suffix (``n_stable``, ``n_sun``, ``ehull_mean``, ``sun_per_second``) are the headline: the
    relaxed rule when the table has relaxed E_hull, else the unrelaxed one; ``*_unrelaxed``/``*_relaxed`` are both.
    """
    n = len(table)
    summary: dict[str, Any] = {"n_total": n, "n_built": int(table["error"].isna().sum())}
    present = [c for c in _RELAX_ONLY_FLAGS if c in table]
    for column in (*SUMMARY_FLAGS, *present):
        if column in table and table[column].notna().any():
            summary[f"n_{column}"] = _count(table[column])
            summary[f"frac_{column}"] = summary[f"n_{column}"] / n if n else None
        else:
            summary[f"n_{column}"] = None
            summary[f"frac_{column}"] = None
    if "novelty_error" in table:
        summary["n_novelty_undecided"] = int(table["novelty_error"].notna().sum())
    if "novelty_error_unrelaxed" in table:
        summary["n_novelty_undecided_unrelaxed"] = int(table["novelty_error_unrelaxed"].notna().sum())
    if "novelty_stage" in table:
        summary["n_novel_new_composition"] = int((table["novelty_stage"] == "composition").sum())
    if "stable_unique" in table:  # de-duplicated among the stable crystals, as the S.U.N. rule counts them
        summary["n_stable_unique"] = _count(table["stable_unique"])
    ehull_column = "e_hull_relaxed" if "e_hull_relaxed" in table else "e_hull"
    if ehull_column in table:
        summary["ehull_column"] = ehull_column
        summary.update(_ehull_stats(table, ehull_column, "ehull"))
    for column, prefix in (("e_hull", "ehull_unrelaxed"), ("e_hull_relaxed", "ehull_relaxed")):
        if column in table:
            summary.update(_ehull_stats(table, column, prefix))
    summary["sampling_seconds"] = sampling_seconds
    for key in ("sun", "sun_unrelaxed", "sun_relaxed"):
        count = summary.get(f"n_{key}")
        summary[f"{key}_per_second"] = (
            count / sampling_seconds
            if count is not None and sampling_seconds is not None and sampling_seconds > 0
            else None
        )
    if summary["n_sun"] is not None:
        summary["sun_rule"] = "sun_relaxed" if summary["n_sun_relaxed"] is not None else "sun_unrelaxed"
        summary["sun_rules"] = {k: v for k, v in SUN_RULES.items() if summary[f"n_{k}"] is not None}
    reasons: Counter = Counter()
    for column in (
        "error",
        "struct_reason",
        "comp_reason",
        "e_hull_reason",
        "relax_reason",
        "e_hull_relaxed_reason",
        "novelty_error",
    ):
        if column in table:
            reasons.update(
                f"{column}: {_SCREENED.sub('screened: unrelaxed E_hull >', str(r))}" for r in table[column].dropna()
            )
    summary["top_failure_reasons"] = dict(reasons.most_common(10))
    summary["settings"] = settings
    return summary


def space_group_table(table: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Counts and rates per space group, the paper's Fig. 4: one row per group, most frequent first.

    ``by`` is the grouping column; by default the space group the sampler was asked for (``G``, as ``crystalformer-rl
    sample`` writes it) when the input has one, else ``space_group`` (spglib on the structure as sampled). Rates are
    fractions of the group's rows; ``frac_of_samples`` is the group's share of all rows. Undecodable rows with no
    group form a row of their own (an empty ``space_group``), so the counts add up to the summary's.
    """
    if by is None:
        by = "G" if "G" in table.columns and table["G"].notna().any() else "space_group"
    if by not in table.columns:
        raise ValueError(f"no column {by!r} to group by (columns: {', '.join(map(str, table.columns))})")
    frame = pd.DataFrame({"space_group": pd.to_numeric(table[by], errors="coerce").astype("Int64")})
    flags = [c for c in SPACE_GROUP_FLAGS if c in table and table[c].notna().any()]
    for c in flags:
        frame[c] = table[c].fillna(False).astype(bool).to_numpy()
    ehulls = [c for c in ("e_hull", "e_hull_relaxed") if c in table]
    for c in ehulls:
        frame[c] = pd.to_numeric(table[c], errors="coerce").to_numpy()
    grouped = frame.groupby("space_group", dropna=False, sort=True)
    out = pd.DataFrame({"n": grouped.size()})
    out["frac_of_samples"] = out["n"] / max(len(table), 1)
    for c in flags:
        out[f"n_{c}"] = grouped[c].sum().astype(int)
        out[f"frac_{c}"] = out[f"n_{c}"] / out["n"]
    for c in ehulls:
        out[f"{c}_median"] = grouped[c].median()
    out = out.reset_index().sort_values(["n", "space_group"], ascending=[False, True], kind="stable")
    out = out.reset_index(drop=True)
    out.attrs["by"] = by
    return out


def _as_reference(reference: Any, progress: bool) -> ReferenceIndex | None:
    if reference is None or isinstance(reference, ReferenceIndex):
        return reference
    if isinstance(reference, (str, os.PathLike)):
        return ReferenceIndex.from_file(reference, progress=progress)
    return ReferenceIndex.from_structures(reference)


@dataclass
class EvaluationOptions:
    """How :func:`evaluate_structures` judges crystals (the rules themselves are in ``docs/evaluation.md``)."""

    stability: bool = True  # compute E_hull (through ``ehull_fn``, default an :class:`EhullCalculator`)
    relax: bool = False  # relax first, and judge stability, uniqueness and novelty on the relaxed structures
    fmax: float = 0.1  # relaxation force threshold (eV/Å)
    steps: int = 500  # maximum relaxation steps
    relax_primitive: bool = False  # relax each crystal's primitive cell (fewer atoms per step for centred cells)
    relax_screen: float | None = None  # not relaxed, and not stable, when the unrelaxed E_hull is above (eV/atom)
    relax_chunk_size: int = 64  # crystals relaxed in lockstep, and written together with a ``relax_store``
    ehull_threshold: float = 0.1  # stable: E_hull <= this (eV/atom)
    same_space_group: bool = False  # novelty compares only references of the same space group
    symprec: float = 0.1  # spglib tolerance of the ``space_group`` column
    batch_size: int = 64  # structures per E_hull call
    space_group_column: str | None = None  # column of the per-space-group table (default: ``G`` if present)


def evaluate_structures(
    structures: Sequence[Structure | None] | LoadedCrystals,
    names: Sequence[str] | None = None,
    errors: Sequence[str | None] | None = None,
    extra: pd.DataFrame | None = None,
    reference: ReferenceIndex | Sequence[Structure] | str | os.PathLike | None = None,
    options: EvaluationOptions | None = None,
    *,
    ehull: EhullCalculator | None = None,
    ehull_fn: EhullFn | None = None,
    relax_fn: RelaxFn | None = None,
    relax_store: RelaxedChunks | None = None,
    sampling_seconds: float | None = None,
    progress: bool = True,
    **overrides: Any,
) -> EvaluationResult:
    """Evaluate crystals (see the module docstring for the definitions); never raises on a bad structure.

    Args:
        structures: the crystals (``None`` for samples that could not be decoded), or a :class:`LoadedCrystals`.
        names, errors, extra: row names, why a ``None`` structure failed, extra columns copied into the table.
        reference: structures for novelty (a :class:`ReferenceIndex`, structures, a table or CIF folder path, or a
            ``datasets`` Hub id); ``None`` skips novelty (and therefore S.U.N.); :func:`default_reference` gives
            the one the command line uses.
        options: the :class:`EvaluationOptions`; keyword ``overrides`` (``relax=True``, ``steps=30``, ...) replace
            its fields, as ``model.sample``'s keywords override its ``SamplingOptions``.
        ehull: the :class:`EhullCalculator` behind the default ``ehull_fn`` and ``relax_fn`` (default:
            ``EhullCalculator()``: CHGNet r2SCAN against the shipped MP hull).
        ehull_fn: E_hull of a list of structures (replaces ``ehull``'s).
        relax_fn: relaxation of a list of structures (default: ``ehull``'s potential, FIRE, ``fmax``, ``steps``).
        relax_store: where each chunk of relaxations is written as it finishes (:class:`RelaxedChunks`, the
            command's ``OUTPUT_DIR/relaxed``); with ``resume`` the crystals it already holds are not relaxed again.
            Its input and settings are checked before any work.
        sampling_seconds: wall time spent generating the samples, for S.U.N. per second.
    """
    options = dataclasses.replace(options or EvaluationOptions(), **overrides)
    stability, relax, symprec = options.stability, options.relax, options.symprec
    space_group_column = options.space_group_column
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
    screen = options.relax_screen if relax else None
    if screen is not None and (not stability or screen < options.ehull_threshold):
        raise ValueError(
            f"relax_screen {screen}: needs stability (the unrelaxed E_hull) and a value >= ehull_threshold "
            f"({options.ehull_threshold})"
        )
    relax_settings = {"fmax": options.fmax, "steps": options.steps, "primitive": options.relax_primitive}
    earlier: dict[int, dict[str, Any]] = {}
    if relax and relax_store is not None:  # another input or other settings are refused before any work
        relax_store.settings = {  # the caller's (the potential: --calculator, --hull), then these
            **relax_store.settings,
            "fmax": options.fmax,
            "steps": options.steps,
            "relax_primitive": bool(options.relax_primitive),
            "relax_screen": screen,
            "stability": bool(stability),
        }
        earlier = relax_store.open(crystals_fingerprint(structures, names), n)
    # Load models and the reference first: a wrong path or a missing model fails now, not after the relaxations.
    index = _as_reference(reference, progress)
    if ehull is None and stability and ehull_fn is None and relax and relax_fn is None:
        ehull = EhullCalculator()  # one potential for E_hull and relaxation, so relaxed E_hull is consistent
    if stability and ehull_fn is None:
        ehull_fn = default_ehull_fn(ehull=ehull)
    if relax and relax_fn is None:
        energy_model = ehull.calculator if ehull is not None else None
        relax_fn = default_relax_fn(fmax=options.fmax, steps=options.steps, energy_model=energy_model)

    table = _validity_table(names, structures, errors, symprec, progress)
    for i, s in enumerate(structures):  # partial occupancy, a dummy species: no E_hull, match or novelty to judge
        if s is not None and (reason := check_species(s)) is not None:
            structures[i] = None
            table.loc[i, "error"] = reason
    if space_group_column is not None:  # now, not after hours of relaxation
        inputs = list(extra.columns) if extra is not None and len(extra) == n else []
        available = [*table.columns, *inputs, *(f"input_{c}" for c in inputs if c in table.columns)]
        if space_group_column not in available:
            raise ValueError(
                f"space_group_column {space_group_column!r} is not a column of the input or the table "
                f"(available: {', '.join(map(str, dict.fromkeys(available)))})"
            )
    relaxation = _Relaxation(relax_fn, relax_settings, screen, options.relax_chunk_size, relax_store, earlier)
    relaxed, stable, stable_unrelaxed, relaxation_seconds = _stability_columns(
        table,
        structures,
        stability,
        relaxation if relax else None,
        ehull_fn,
        options.ehull_threshold,
        options.batch_size,
        progress,
    )
    _sun_columns(
        table,
        structures,
        relaxed if relax else None,
        index,
        stable,
        stable_unrelaxed,
        options.same_space_group,
        progress,
    )

    if extra is not None and len(extra) == n:
        extra = extra.reset_index(drop=True)
        for column in extra.columns:
            target = column if column not in table.columns else f"input_{column}"
            table[target] = extra[column].values

    settings = {
        "ehull_threshold": options.ehull_threshold,
        "stable_rule": "e_hull <= ehull_threshold (eV/atom)",
        "space_group_table_by": None,
        "stability": bool(stability),
        "relaxed": bool(relax),
        "fmax": options.fmax if relax else None,
        "steps": options.steps if relax else None,
        "relax_primitive": bool(options.relax_primitive) if relax else None,
        "relax_screen": screen,
        "relax_screen_rule": (
            None
            if screen is None
            else "not relaxed, and not stable, when e_hull (unrelaxed) > relax_screen (eV/atom); off = relax all"
        ),
        "reference": getattr(index, "name", None),
        "reference_size": len(index) if index is not None else None,
        "same_space_group": options.same_space_group,
        "space_group_symprec": symprec,
        "matcher": "pymatgen StructureMatcher() defaults (ltol 0.2, stol 0.3, angle_tol 5)",
    }
    by_space_group = space_group_table(table, by=space_group_column)
    settings["space_group_table_by"] = by_space_group.attrs["by"]
    summary = summarize(table, settings, sampling_seconds)
    summary["space_group_column"] = by_space_group.attrs["by"]
    summary["n_space_groups"] = int(by_space_group["space_group"].notna().sum())
    summary["evaluation_seconds"] = time.perf_counter() - t0
    summary["relaxation_seconds"] = relaxation_seconds
    if relax:
        summary["n_relax_screened"] = _count(table["relax_screened"])
        summary["n_relaxed_earlier"] = sum(i in earlier for i in relaxation.relaxed_indices)
        steps = pd.to_numeric(table["relax_steps"], errors="coerce")
        summary["relax_steps_total"] = int(steps.sum()) if steps.notna().any() else None
    if index is None:
        summary["note"] = "no reference set: novelty and S.U.N. not computed"
    return EvaluationResult(table=table, summary=summary, relaxed=relaxed, by_space_group=by_space_group)


def _validity_table(names, structures, errors, symprec: float, progress: bool) -> pd.DataFrame:
    """One row per crystal: formula, detected space group, size, and the structure / composition validity."""
    rows: list[dict[str, Any]] = []
    for name, s, err in tqdm(
        zip(names, structures, errors), total=len(structures), desc="validity", unit="crystal", disable=not progress
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
    return table


@dataclass
class _Relaxation:
    """How ``evaluate --relax`` relaxes: the relaxer, its settings, the screen, the chunks and where they go."""

    relax_fn: RelaxFn
    settings: dict[str, Any]  # fmax, steps, primitive
    screen: float | None
    chunk_size: int
    store: RelaxedChunks | None
    earlier: dict[int, dict[str, Any]]  # rows of the store's finished chunks, by input index
    relaxed_indices: list[int] = field(default_factory=list)  # relaxed now or earlier (not screened or unrelaxable)


def _stability_columns(table, structures, stability, relaxation, ehull_fn, ehull_threshold, batch_size, progress):
    """Add E_hull (as sampled and, with ``relaxation``, relaxed) and the stable flags to ``table``.

    Returns ``(relaxed structures, stable, stable_unrelaxed, relaxation seconds)``; ``stable`` is the relaxed
    rule's flag with relaxation, the unrelaxed one's without, ``None`` without stability."""
    relaxed: list[Structure | None] = [None] * len(structures)
    relaxation_seconds: float | None = None
    stable: list[bool] | None = None
    stable_unrelaxed: list[bool] | None = None
    if stability:
        values, reasons = compute_ehull(structures, ehull_fn, batch_size=batch_size, progress=progress)
        table["e_hull"] = pd.array(values, dtype="Float64")
        table["e_hull_reason"] = reasons
        stable = stable_unrelaxed = _is_stable(table["e_hull"], ehull_threshold)
        table["stable_unrelaxed"] = pd.array(stable_unrelaxed, dtype="boolean")
    if relaxation is not None:
        start = time.perf_counter()
        rows = _relax(table, structures, relaxation, ehull_fn if stability else None, batch_size, progress)
        relaxation_seconds = time.perf_counter() - start
        relaxed = [
            _structure(row["relaxed_cif"]) if row.get("structure") is None else row["structure"] for row in rows
        ]
        table["energy_relaxed"] = pd.array([row["energy_relaxed"] for row in rows], dtype="Float64")
        table["relax_reason"] = [row["relax_reason"] for row in rows]
        table["relax_steps"] = pd.array([row["relax_steps"] for row in rows], dtype="Int64")
        table["relax_converged"] = pd.array([row["relax_converged"] for row in rows], dtype="boolean")
        table["relax_screened"] = pd.array([bool(row.get("screened")) for row in rows], dtype="boolean")
        table["relaxed_cif"] = [row["relaxed_cif"] for row in rows]
        if stability:
            table["e_hull_relaxed"] = pd.array([row["e_hull_relaxed"] for row in rows], dtype="Float64")
            table["e_hull_relaxed_reason"] = [row["e_hull_relaxed_reason"] for row in rows]
            stable = _is_stable(table["e_hull_relaxed"], ehull_threshold)
            table["stable_relaxed"] = pd.array(stable, dtype="boolean")
    if stability:
        table["stable"] = pd.array(stable, dtype="boolean")
    return relaxed, stable, stable_unrelaxed, relaxation_seconds


def _relax(table, structures, relaxation: _Relaxation, ehull_fn, batch_size, progress) -> list[dict[str, Any]]:
    """One row per crystal of the relaxation's columns (:data:`RELAXED_COLUMNS`, plus ``structure`` and
    ``screened``): unrelaxable and screened crystals get their reason, the store's earlier rows are reused, and the
    rest are relaxed chunk by chunk, each chunk's relaxed E_hull computed and the chunk written as it finishes."""
    empty = dict.fromkeys(RELAXED_COLUMNS)
    rows: list[dict[str, Any]] = []
    for i, s in enumerate(structures):
        row = {**empty, "relax_reason": unrelaxable_reason(s)}
        e_hull = table["e_hull"].iloc[i] if "e_hull" in table else pd.NA
        if row["relax_reason"] is None and relaxation.screen is not None and e_hull is not pd.NA:
            if float(e_hull) > relaxation.screen:
                row["relax_reason"] = f"screened: unrelaxed E_hull {float(e_hull):.4g} > {relaxation.screen:g}"
                row["screened"] = True
        if row["relax_reason"] is not None and ehull_fn is not None:
            row["e_hull_relaxed_reason"] = row["relax_reason"]
        rows.append(row)
    todo = [i for i, row in enumerate(rows) if row["relax_reason"] is None]
    relaxation.relaxed_indices = todo
    earlier = [i for i in todo if i in relaxation.earlier]
    for i in earlier:
        rows[i].update({k: relaxation.earlier[i].get(k) for k in RELAXED_COLUMNS})
    if earlier:
        logger.info("relaxation: %d of %d crystals relaxed by the earlier run, kept", len(earlier), len(todo))
    remaining = [i for i in todo if i not in relaxation.earlier]
    names = table["name"].tolist()
    chunks = relax_in_chunks(
        structures,
        remaining,
        relaxation.relax_fn,
        chunk_size=relaxation.chunk_size,
        primitive=relaxation.settings["primitive"],
        progress=progress,
        done=len(earlier),
    )
    start = time.perf_counter()
    for chunk, outcomes in chunks:
        for i, outcome in zip(chunk, outcomes):
            rows[i].update(
                structure=outcome.structure,
                relaxed_cif=None if outcome.structure is None else outcome.structure.to(fmt="cif"),
                energy_relaxed=outcome.energy,
                relax_steps=outcome.steps,
                relax_converged=outcome.converged,
                relax_reason=outcome.reason,
            )
        if ehull_fn is not None:
            values, reasons = compute_ehull(
                [rows[i]["structure"] for i in chunk], ehull_fn, batch_size=batch_size, progress=False
            )
            for i, value, reason in zip(chunk, values, reasons):
                rows[i].update(e_hull_relaxed=value, e_hull_relaxed_reason=rows[i]["relax_reason"] or reason)
        seconds, start = time.perf_counter() - start, time.perf_counter()
        if relaxation.store is not None:
            relaxation.store.write(
                [
                    {
                        "index": i,
                        "name": str(names[i]),
                        **{k: rows[i][k] for k in RELAXED_COLUMNS},
                        "chunk_seconds": seconds,
                    }
                    for i in chunk
                ]
            )
    n_failed = sum(rows[i]["relaxed_cif"] is None for i in todo)
    if n_failed:
        logger.warning("relaxation: %d/%d structures not relaxed", n_failed, len(todo))
    return rows


def _structure(cif: str | None) -> Structure | None:
    """The relaxed structure an earlier run wrote (``relaxed_cif``, every site listed), read back as it was written:
    with pymatgen's default tolerances its CIF reader merges atoms that a relaxation pushed onto one another (and
    then finds no structure) and snaps coordinates within 1e-4 of 1/3 and 2/3 onto them, so a resumed evaluation
    would judge other structures than the run that relaxed them."""
    if cif is None:
        return None
    from pymatgen.io.cif import CifParser

    return CifParser.from_str(cif, site_tolerance=0, frac_tolerance=0).parse_structures(primitive=False)[0]


def _sun_columns(table, structures, relaxed, index, stable, stable_unrelaxed, same_space_group, progress) -> None:
    """Add uniqueness, novelty and both S.U.N. rules to ``table`` (``relaxed`` is ``None`` without relaxation).

    With relaxation the headline (relaxed) rule judges the relaxed structures, where relaxation succeeded; the
    unrelaxed rule judges the structures as sampled, so its numbers do not depend on whether one relaxes."""
    relax = relaxed is not None
    matched = [r if r is not None else s for r, s in zip(relaxed, structures)] if relax else structures
    duplicate_of = deduplicate(matched, progress=progress)
    table["duplicate_of"] = pd.array(duplicate_of, dtype="Int64")
    table["unique"] = pd.array(_is_unique(duplicate_of), dtype="boolean")
    checks = None
    if index is not None:
        checks = novelty_checks(matched, index, same_space_group=same_space_group, progress=progress)
        _novelty_columns(table, checks)
    duplicate_of_unrelaxed, checks_unrelaxed = duplicate_of, checks
    if relax:
        moved = [i for i, r in enumerate(relaxed) if r is not None]
        duplicate_of_unrelaxed = deduplicate(structures, progress=progress)
        table["duplicate_of_unrelaxed"] = pd.array(duplicate_of_unrelaxed, dtype="Int64")
        table["unique_unrelaxed"] = pd.array(_is_unique(duplicate_of_unrelaxed), dtype="boolean")
        if checks is not None:  # only the relaxed ones need a second test
            checks_unrelaxed = list(checks)
            again = novelty_checks(
                [structures[i] for i in moved], index, same_space_group=same_space_group, progress=progress
            )
            for i, check in zip(moved, again):
                checks_unrelaxed[i] = check
            _novelty_columns(table, checks_unrelaxed, suffix="_unrelaxed")
    if stable is not None:
        first_stable = _first_stable(matched, stable, progress)
        table["stable_unique"] = pd.array(first_stable, dtype="boolean")
        first_stable_unrelaxed = first_stable
        if relax:
            first_stable_unrelaxed = _first_stable(structures, stable_unrelaxed, progress)
            table["stable_unique_unrelaxed"] = pd.array(first_stable_unrelaxed, dtype="boolean")
    if checks is not None and stable is not None:
        table["sun"] = pd.array(_sun(first_stable, _is_novel(checks)), dtype="boolean")
        table["sun_unrelaxed"] = pd.array(_sun(first_stable_unrelaxed, _is_novel(checks_unrelaxed)), dtype="boolean")
        if relax:
            table["sun_relaxed"] = table["sun"]


def _is_stable(ehull: pd.Series, threshold: float) -> list[bool]:
    """``E_hull <= threshold``; a missing E_hull is not stable."""
    return [bool(v <= threshold) if v is not pd.NA else False for v in ehull]


def _is_unique(duplicate_of: Sequence[int | None]) -> list[bool]:
    return [d is not None and d == i for i, d in enumerate(duplicate_of)]


def _is_novel(checks: Sequence[Any]) -> list[bool]:
    """Novel only when shown to be: an undecided test counts as not novel."""
    return [c is not None and c.novel is True for c in checks]


def _novelty_columns(table: pd.DataFrame, checks: Sequence[Any], suffix: str = "") -> None:
    table[f"novel{suffix}"] = pd.array(_is_novel(checks), dtype="boolean")
    if not suffix:
        table["novelty_stage"] = [None if c is None or c.novel is None else c.stage for c in checks]
    table[f"reference_match{suffix}"] = [None if c is None else c.match for c in checks]
    table[f"novelty_error{suffix}"] = [None if c is None else c.error for c in checks]


def _first_stable(structures: Sequence[Structure | None], stable: Sequence[bool], progress: bool) -> list[bool]:
    """Whether each crystal is stable and matches no stable crystal kept before it: the reference's
    ``check_sun_materials`` keeps the stable crystals first and de-duplicates among them (greedy, in input order).

    Not the same as ``stable & unique``: ``unique`` de-duplicates all crystals, so a group whose first member is
    unstable would lose its stable members, and ``StructureMatcher`` is not transitive, so groups formed with the
    unstable crystals in them can split the stable ones differently.
    """
    kept = deduplicate(
        [s if ok else None for s, ok in zip(structures, stable)], progress=progress, desc="uniqueness (stable)"
    )
    return _is_unique(kept)


def _sun(first_stable: Sequence[bool], novel: Sequence[bool]) -> list[bool]:
    """S.U.N. flags as ``check_sun_materials``: the stable crystals kept by de-duplication among them that are novel."""
    return [bool(u and n) for u, n in zip(first_stable, novel)]


def evaluate_crystals(
    source: str | os.PathLike | Sequence[Structure],
    column: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> EvaluationResult:
    """Load crystals from ``source`` (see :func:`~crystalformer_rl.materials.io.load_crystals`) and evaluate them.

    With ``limit``, the sampling time recorded for the whole input is scaled to the crystals evaluated.
    """
    loaded = load_crystals(source, column=column, limit=limit, progress=progress)
    if kwargs.get("sampling_seconds") is None:
        kwargs["sampling_seconds"] = _scaled_sampling_seconds(loaded, limit)[0]
    return evaluate_structures(loaded, progress=progress, **kwargs)


class ReferenceChoice(NamedTuple):
    """Which novelty reference :func:`default_reference` picked, and why (recorded in the summary's settings)."""

    path: Path | None
    why: str
    fallback: bool  # the input names a model whose own training crystals are unknown


def default_reference(metadata: dict[str, Any] | None = None) -> ReferenceChoice:
    """The novelty reference used when none is given, and why: the training crystals of the model named in the
    input's metadata (``model``, as ``crystalformer-rl sample`` records it), else the shipped corpus."""
    metadata = metadata or {}
    model = metadata.get("model")
    own = model_reference(model) if "model" in metadata else None
    if own is not None:
        origin = "the embedded model" if model in (None, "default") else f"model {model}"
        return ReferenceChoice(own, f"training crystals of {origin} ({own})", False)
    if not DEFAULT_REFERENCE.is_file():
        why = f"the shipped corpus {DEFAULT_REFERENCE} is missing (reinstall the package or pass --reference)"
        return ReferenceChoice(None, why, True)
    if "model" in metadata:
        why = (
            f"the embedded model's training corpus ({DEFAULT_REFERENCE}), as model {model} carries no "
            f"reference_corpus file; pass --reference with its training set"
        )
        return ReferenceChoice(DEFAULT_REFERENCE, why, True)
    return ReferenceChoice(DEFAULT_REFERENCE, f"the embedded model's training corpus ({DEFAULT_REFERENCE})", False)


def _scaled_sampling_seconds(loaded: LoadedCrystals, limit: int | None) -> tuple[float | None, str | None]:
    seconds = loaded.sampling_seconds
    if seconds is None:
        return None, None
    total = loaded.metadata.get("num_samples")
    if limit is not None and isinstance(total, (int, float)) and total > len(loaded) > 0:
        return seconds * len(loaded) / total, f"input metadata, scaled to {len(loaded)} of {int(total)} samples"
    return seconds, "input metadata"
