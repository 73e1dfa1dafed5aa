"""Uniqueness and novelty with pymatgen's ``StructureMatcher`` (defaults: ltol 0.2, stol 0.3, angle_tol 5°).

Both compare a structure only with structures of the same reduced composition, as CrystalFormer's
``check_sun_materials``: the matcher never matches different compositions anyway, and bucketing by formula turns
an all-pairs search into a handful of comparisons per structure. The reference set (a training corpus of
~10^5 crystals) is indexed by reduced formula once, and its structures are parsed only for the formulas that
generated samples actually have.

Novelty is decided in two stages: a structure whose reduced composition is absent from the reference is novel at
once (a dictionary look-up); only the others are compared with ``StructureMatcher``. A matcher that fails (e.g. on
a degenerate cell) makes the result unknown, not novel: :meth:`ReferenceIndex.check` reports it and
:func:`novelty` counts it as not novel. A collapsed cell (:func:`unmatchable_reason`) is never given to the matcher,
whose Niggli reduction would not return: it matches nothing, and its novelty is unknown.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from tqdm.auto import tqdm

from ..utils import HUB_REPO_ID, atomic_write_bytes, first_line, hub_offline
from .io import (
    ID_COLUMNS,
    TOKEN_ARRAYS,
    _column_values,
    _crystal_column,
    load_crystals,
    read_table,
    structure_from_record,
    tokens_from_record,
)


logger = logging.getLogger(__name__)

__all__ = [
    "NoveltyCheck",
    "ReferenceIndex",
    "deduplicate",
    "fit_or_reason",
    "novelty",
    "novelty_checks",
    "reduced_formula",
    "reference_table",
    "space_group_number",
    "unmatchable_reason",
    "write_reference_table",
]

#: columns of a compact reference table (:func:`reference_table`): the formula makes indexing free of parsing
REFERENCE_COLUMNS = ("id", "reduced_formula", "tokens")
# owner/name or owner/name:split of a `datasets` Hub repository
_HUB_DATASET = re.compile(rf"^({HUB_REPO_ID})(?::([\w.-]+))?$")
_CIF_FORMULA = re.compile(r"^_chemical_formula_sum\s+(?:'([^']*)'|\"([^\"]*)\"|(\S+))", re.MULTILINE)


def reduced_formula(structure: Structure) -> str:
    """Reduced formula without oxidation states (the bucket key for matching)."""
    return structure.composition.element_composition.reduced_formula


def space_group_number(structure: Structure, symprec: float = 0.1) -> int | None:
    """International space-group number from spglib, ``None`` when spglib fails (e.g. overlapping atoms)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception:
        return None


def _matcher(matcher: StructureMatcher | None) -> StructureMatcher:
    return matcher if matcher is not None else StructureMatcher()


#: Bounds of a cell that ``StructureMatcher`` can reduce. Its Niggli reduction did not return within 30 s (and
#: stalled an RL run) on collapsed cells a sampler can emit (lattice vectors of 1e-5 Å, a needle, a flat cell,
#: lengths 10^5 apart; 1,000× apart took 7 s, 100× 0.04 s); real crystals are far inside
#: (3,000 MPTS-52 validation crystals: shortest vector 2.4 Å, lengths at most 9.2× apart).
MIN_MATCHABLE_LENGTH = 0.5  # Å: a shorter lattice vector puts every atom within 0.5 Å of its own image
MAX_MATCHABLE_ASPECT = 100.0  # longest / shortest lattice vector
MIN_MATCHABLE_VOLUME = 0.1  # Å^3, the structure-validity bound


def unmatchable_reason(structure: Structure) -> str | None:
    """Why ``StructureMatcher`` must not be run on ``structure`` (a collapsed cell), or ``None``."""
    lengths = np.asarray(structure.lattice.abc, dtype=float)
    volume = float(structure.lattice.volume)
    if not (np.all(np.isfinite(lengths)) and np.isfinite(volume)):
        return "non-finite lattice"
    if lengths.min() < MIN_MATCHABLE_LENGTH:
        return f"lattice vector of {lengths.min():.3g} Å (< {MIN_MATCHABLE_LENGTH} Å)"
    if lengths.max() > MAX_MATCHABLE_ASPECT * lengths.min():
        return f"lattice vectors {lengths.max() / lengths.min():.3g}× apart (> {MAX_MATCHABLE_ASPECT:g}×)"
    if abs(volume) < MIN_MATCHABLE_VOLUME:
        return f"cell volume {abs(volume):.3g} Å^3 (< {MIN_MATCHABLE_VOLUME} Å^3)"
    return None


def fit_or_reason(matcher: StructureMatcher, a: Structure, b: Structure) -> tuple[bool, str | None]:
    """``(matched, why undecided)``: a collapsed cell (the matcher would not return) or a matcher exception gives
    ``(False, reason)`` instead of raising, so one degenerate crystal cannot end an evaluation or a training step."""
    reason = unmatchable_reason(a) or unmatchable_reason(b)
    if reason is not None:
        return False, f"not matchable: {reason}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(matcher.fit(a, b)), None
    except Exception as exc:
        return False, f"StructureMatcher failed ({type(exc).__name__}: {exc})"


def _fit(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    matched, reason = fit_or_reason(matcher, a, b)
    if reason is not None:  # counted as no match, visibly
        log = logger.debug if reason.startswith("not matchable") else logger.warning
        log("%s vs %s counted as no match: %s", a.composition.reduced_formula, b.composition.reduced_formula, reason)
    return matched


def deduplicate(
    structures: Sequence[Structure | None],
    matcher: StructureMatcher | None = None,
    progress: bool = True,
    desc: str = "uniqueness",
) -> list[int | None]:
    """Greedy de-duplication: for each structure, the index of the first earlier structure it matches (itself if none).

    A structure is *unique* when ``result[i] == i``. Matching is only tried within the same reduced
    composition, against the structures kept so far (the representatives), in input order. ``None`` inputs get
    ``None``.
    """
    matcher = _matcher(matcher)
    kept: dict[str, list[int]] = {}
    out: list[int | None] = [None] * len(structures)
    for i, s in enumerate(tqdm(structures, desc=desc, unit="crystal", disable=not progress)):
        if s is None:
            continue
        try:
            key = reduced_formula(s)
        except Exception:
            out[i] = i
            continue
        group = kept.setdefault(key, [])
        match = next((j for j in group if _fit(matcher, structures[j], s)), None)
        if match is None:
            group.append(i)
            out[i] = i
        else:
            out[i] = match
    return out


@dataclass
class NoveltyCheck:
    """Outcome of one novelty test.

    ``novel`` is ``None`` when no reference matched but the test was incomplete (the matcher failed on a candidate,
    or a reference structure of that composition could not be built): such a crystal is not known to be novel.
    ``stage`` is ``"composition"`` when no reference shares the reduced composition (decided without matching),
    else ``"structure"``.
    """

    novel: bool | None
    stage: str = "structure"
    match: str | None = None  # id of the first matching reference
    candidates: int = 0  # references compared with StructureMatcher
    error: str | None = None


class ReferenceIndex:
    """Reference crystals (e.g. the training corpus) indexed by reduced formula, parsed lazily.

    Build it with :meth:`from_structures` or :meth:`from_file` (a CSV / parquet / JSON table with a ``cif``,
    ``structure`` or ``tokens`` column, or the ``G, W, A, XYZ, L`` token arrays of a prepared dataset; a folder of
    CIFs; or a ``datasets`` Hub id). Only the formula of each row is read up front (a ``reduced_formula`` column
    when present, else the CIF's ``_chemical_formula_sum``); structures are built on the first query of their
    formula.
    """

    def __init__(
        self,
        entries: dict[str, list[Any]],
        builder: Callable[[Any], Structure],
        name: str = "reference",
        ids: dict[str, list[str | None]] | None = None,
    ):
        self._entries = entries
        self._ids = ids or {}
        self._builder = builder
        self._parsed: dict[str, list[Structure]] = {}
        self._parsed_ids: dict[str, list[str | None]] = {}
        self._unbuilt: dict[str, str] = {}  # formula -> why some of its reference structures could not be built
        self._space_groups: dict[tuple[str, float], list[int | None]] = {}
        self.name = name
        self.n_unreadable = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def __contains__(self, formula: str) -> bool:
        return formula in self._entries

    @property
    def formulas(self) -> list[str]:
        return list(self._entries)

    @classmethod
    def from_structures(
        cls, structures: Iterable[Structure], name: str = "reference", ids: Iterable[str] | None = None
    ) -> ReferenceIndex:
        entries: dict[str, list[Any]] = {}
        id_lists: dict[str, list[str | None]] = {}
        structures = list(structures)
        ids = list(ids) if ids is not None else [None] * len(structures)
        for s, rid in zip(structures, ids):
            key = reduced_formula(s)
            entries.setdefault(key, []).append(s)
            id_lists.setdefault(key, []).append(rid)
        return cls(entries, lambda s: s, name=name, ids=id_lists)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, column: str | None = None, progress: bool = True, split: str = "train"
    ) -> ReferenceIndex:
        """Index a table of reference crystals, a folder of CIFs or a ``datasets`` Hub id (see the class docstring).

        A Hub id is ``owner/name`` (its ``split``, default ``train``) or ``owner/name:split``.

        Raises:
            FileNotFoundError: no such file or folder, and not a Hub data set that can be loaded.
        """
        path = Path(path).expanduser()
        if path.is_dir():  # e.g. a folder of CIFs
            loaded = load_crystals(path, progress=progress)
            kept = [(n, s) for n, s in zip(loaded.names, loaded.structures) if s is not None]
            return cls.from_structures([s for _, s in kept], name=str(path), ids=[n for n, _ in kept])
        if path.is_file():
            frame, _ = read_table(path)
            name = str(path)
        else:
            frame, name = _hub_reference_frame(str(path), split), str(path)
        col = _crystal_column(list(frame.columns), column)
        values = _column_values(frame, col)
        id_column = next((c for c in ID_COLUMNS if c in frame.columns), None)
        row_ids = [str(v) for v in frame[id_column]] if id_column else [None] * len(values)
        formulas = frame["reduced_formula"].tolist() if "reduced_formula" in frame.columns else None
        del frame
        entries: dict[str, list[Any]] = {}
        id_lists: dict[str, list[str | None]] = {}
        normalised: dict[str, str] = {}  # a stated formula, once per distinct text
        n_bad = 0
        with warnings.catch_warnings():  # e.g. pymatgen's "no Pauling electronegativity for He" when ordering
            warnings.simplefilter("ignore")
            for i, value in enumerate(
                tqdm(values, desc=f"indexing {Path(name).name}", unit="crystal", disable=not progress)
            ):
                try:
                    if formulas is not None and isinstance(formulas[i], str) and formulas[i]:
                        text = formulas[i]
                        if text not in normalised:
                            normalised[text] = Composition(text).element_composition.reduced_formula
                        key = normalised[text]
                    else:
                        key = _formula_of(value, col)
                except Exception:
                    n_bad += 1
                    continue
                entries.setdefault(key, []).append(value)
                id_lists.setdefault(key, []).append(row_ids[i])
        if n_bad:
            logger.warning("%s: %d reference rows without a readable formula were skipped", name, n_bad)
        index = cls(entries, lambda v: structure_from_record(v, col), name=name, ids=id_lists)
        index.n_unreadable = n_bad
        return index

    def _parse(self, formula: str) -> None:
        if formula in self._parsed:
            return
        parsed, ids = [], []
        values = self._entries.get(formula, [])
        row_ids = self._ids.get(formula) or [None] * len(values)
        for value, rid in zip(values, row_ids):
            try:
                parsed.append(self._builder(value))
                ids.append(rid)
            except Exception as exc:
                self.n_unreadable += 1
                self._unbuilt.setdefault(formula, f"{type(exc).__name__}: {exc}")
                logger.debug("unreadable reference structure (%s): %s", formula, exc)
        self._parsed[formula] = parsed
        self._parsed_ids[formula] = ids

    def structures(self, formula: str) -> list[Structure]:
        """Reference structures with this reduced formula (parsed once, unreadable ones dropped)."""
        self._parse(formula)
        return self._parsed[formula]

    def ids(self, formula: str) -> list[str | None]:
        """Ids of :meth:`structures` (``None`` where the source had no id column)."""
        self._parse(formula)
        return self._parsed_ids[formula]

    def space_groups(self, formula: str, symprec: float = 0.1) -> list[int | None]:
        key = (formula, symprec)
        if key not in self._space_groups:
            self._space_groups[key] = [space_group_number(s, symprec) for s in self.structures(formula)]
        return self._space_groups[key]

    def check(
        self,
        structure: Structure,
        matcher: StructureMatcher | None = None,
        same_space_group: bool = False,
        symprec: float = 0.01,
    ) -> NoveltyCheck:
        """Test ``structure`` against the references of its reduced formula (see :class:`NoveltyCheck`)."""
        formula = reduced_formula(structure)
        if formula not in self._entries:
            return NoveltyCheck(True, stage="composition")
        candidates, ids = self.structures(formula), self.ids(formula)
        reason = unmatchable_reason(structure)
        if reason is not None:
            return NoveltyCheck(None, candidates=len(candidates), error=f"not matchable: {reason}")
        if same_space_group:
            sg = space_group_number(structure, symprec)
            groups = self.space_groups(formula, symprec)
            keep = [sg is None or g is None or g == sg for g in groups]
            candidates = [c for c, k in zip(candidates, keep) if k]
            ids = [i for i, k in zip(ids, keep) if k]
        matcher = _matcher(matcher)
        failures: list[str] = []
        for ref, rid in zip(candidates, ids):
            fit, failure = fit_or_reason(matcher, ref, structure)
            if failure is not None:  # a degenerate cell: this pair is undecided, not "different"
                failures.append(failure)
            elif fit:
                return NoveltyCheck(False, match=rid, candidates=len(candidates))
        if failures:
            error = f"StructureMatcher failed on {len(failures)} of {len(candidates)} references ({failures[0]})"
            return NoveltyCheck(None, candidates=len(candidates), error=error)
        if formula in self._unbuilt:
            error = f"reference structures of {formula} could not be built ({self._unbuilt[formula]})"
            return NoveltyCheck(None, candidates=len(candidates), error=error)
        return NoveltyCheck(True, candidates=len(candidates))

    def is_novel(
        self,
        structure: Structure,
        matcher: StructureMatcher | None = None,
        same_space_group: bool = False,
        symprec: float = 0.01,
    ) -> bool:
        """``True`` when no reference structure of the same reduced formula matches ``structure``.

        An undecided test (see :meth:`check`) gives ``False``: a crystal is novel only when shown to be.
        """
        return bool(self.check(structure, matcher, same_space_group=same_space_group, symprec=symprec).novel)


def _hub_reference_frame(name: str, split: str) -> pd.DataFrame:
    """A ``datasets`` Hub repository (``owner/name`` or ``owner/name:split``) as a table."""
    m = _HUB_DATASET.match(name)
    if m is None:
        raise FileNotFoundError(
            f"reference {name}: no such file or folder, and not a datasets Hub id (owner/name); "
            "pass a table (CSV/parquet/JSON), a folder of CIFs or a Hub id"
        )
    repo, split = m.group(1), m.group(2) or split
    try:
        from datasets import load_dataset

        return load_dataset(repo, split=split).to_pandas()
    except (OSError, ValueError) as exc:  # offline, unknown repository, unknown split
        reason = "the Hub is offline (HF_HUB_OFFLINE=1)" if hub_offline() else first_line(exc)
        raise FileNotFoundError(
            f"reference {name}: no such file or folder, and the Hub data set could not be loaded ({reason}); "
            "pass a local table or folder of CIFs, or a reachable Hub id"
        ) from exc


def _formula_of(value: Any, column: str) -> str:
    """Reduced formula of a table cell without building the structure when the text states it."""
    if column in ("tokens", TOKEN_ARRAYS):
        return Composition(tokens_from_record(value, column).formula).reduced_formula
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        m = _CIF_FORMULA.search(value)
        if m:
            text = next(g for g in m.groups() if g is not None)
            return Composition(text).element_composition.reduced_formula
    return reduced_formula(structure_from_record(value, column))


def _as_index(reference: ReferenceIndex | Sequence[Structure] | str | os.PathLike, progress: bool) -> ReferenceIndex:
    if isinstance(reference, ReferenceIndex):
        return reference
    if isinstance(reference, (str, os.PathLike)):
        return ReferenceIndex.from_file(reference, progress=progress)
    return ReferenceIndex.from_structures(reference)


def novelty_checks(
    structures: Sequence[Structure | None],
    reference: ReferenceIndex | Sequence[Structure] | str | os.PathLike,
    matcher: StructureMatcher | None = None,
    same_space_group: bool = False,
    symprec: float = 0.01,
    progress: bool = True,
) -> list[NoveltyCheck | None]:
    """:meth:`ReferenceIndex.check` of every structure (``None`` for ``None`` inputs); never raises on one crystal."""
    reference = _as_index(reference, progress)
    matcher = _matcher(matcher)
    out: list[NoveltyCheck | None] = []
    for s in tqdm(structures, desc="novelty", unit="crystal", disable=not progress):
        if s is None:
            out.append(None)
            continue
        try:
            out.append(reference.check(s, matcher, same_space_group=same_space_group, symprec=symprec))
        except Exception as exc:  # e.g. no composition
            out.append(NoveltyCheck(None, error=f"novelty check failed: {type(exc).__name__}: {exc}"))
    failed = sum(c is not None and c.novel is None for c in out)
    if failed:
        first = next(c.error for c in out if c is not None and c.novel is None)
        logger.warning("novelty undecided for %d of %d crystals, counted as not novel: %s", failed, len(out), first)
    return out


def novelty(
    structures: Sequence[Structure | None],
    reference: ReferenceIndex | Sequence[Structure] | str | os.PathLike,
    matcher: StructureMatcher | None = None,
    same_space_group: bool = False,
    symprec: float = 0.01,
    progress: bool = True,
) -> list[bool | None]:
    """Per structure, ``True`` when it matches no reference structure of the same reduced composition.

    With ``same_space_group`` only references of the same spglib space group (at ``symprec``, 0.01 as
    ``SpacegroupAnalyzer``'s default there) are compared, as the optional mode of CrystalFormer's
    ``check_sun_materials``. ``None`` inputs give ``None``; an undecided test (the matcher failed) gives ``False``
    and a warning with the count (:func:`novelty_checks` has the details).
    """
    checks = novelty_checks(structures, reference, matcher, same_space_group, symprec, progress)
    return [None if c is None else bool(c.novel) for c in checks]


# ------------------------------------------------------------------------------------- compact reference
def reference_table(records: Iterable[dict[str, Any]], ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The compact novelty reference of token rows (``G, W, A, XYZ, L`` as a prepared dataset stores them).

    One row per crystal: ``id``, ``reduced_formula`` (the cheap first test, so indexing parses nothing) and the
    token string (6 decimals), which decodes back to the structure. Rows that do not decode are dropped.
    """
    records = list(records)
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(records))]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rid, record in zip(ids, records):
            try:
                tokens = tokens_from_record(record, TOKEN_ARRAYS)
                rows.append((rid, Composition(tokens.formula).reduced_formula, tokens.to_string()))
            except Exception as exc:
                logger.warning("reference row %s dropped: %s", rid, exc)
    return pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))


def write_reference_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write :func:`reference_table` output as a byte-reproducible ``.csv.gz`` (gzip level 9, no timestamp)."""
    data = gzip.compress(frame.to_csv(index=False).encode("utf-8"), compresslevel=9, mtime=0)
    return atomic_write_bytes(data, path)
