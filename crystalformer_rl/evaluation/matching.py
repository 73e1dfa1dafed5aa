"""Uniqueness and novelty with pymatgen's ``StructureMatcher`` (defaults: ltol 0.2, stol 0.3, angle_tol 5°).

Both compare a structure only with structures of the same reduced composition, as CrystalFormer's
``check_sun_materials``: the matcher never matches different compositions anyway, and bucketing by formula turns
an all-pairs search into a handful of comparisons per structure. The reference set (a training corpus of
~10^5 crystals) is indexed by reduced formula once, and its structures are parsed only for the formulas that
generated samples actually have.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from tqdm.auto import tqdm


logger = logging.getLogger(__name__)

__all__ = ["ReferenceIndex", "deduplicate", "novelty", "reduced_formula", "space_group_number"]

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


def _fit(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(matcher.fit(a, b))
    except Exception as exc:  # a degenerate cell must not end an evaluation
        logger.debug("StructureMatcher failed: %s", exc)
        return False


def deduplicate(
    structures: Sequence[Structure | None],
    matcher: StructureMatcher | None = None,
    progress: bool = True,
) -> list[int | None]:
    """Greedy de-duplication: for each structure, the index of the first earlier structure it matches (itself if none).

    A structure is *unique* when ``result[i] == i``. Matching is only tried within the same reduced
    composition, against the structures kept so far (the representatives), in input order. ``None`` inputs get
    ``None``.
    """
    matcher = _matcher(matcher)
    kept: dict[str, list[int]] = {}
    out: list[int | None] = [None] * len(structures)
    for i, s in enumerate(tqdm(structures, desc="uniqueness", unit="crystal", disable=not progress)):
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


class ReferenceIndex:
    """Reference crystals (e.g. the training corpus) indexed by reduced formula, parsed lazily.

    Build it with :meth:`from_structures` or :meth:`from_file` (a CSV / parquet / JSON table with a ``cif``,
    ``structure`` or ``tokens`` column, or the ``G, W, A, XYZ, L`` token arrays of a prepared dataset). Only the formula of each row is read up front (from the CIF's
    ``_chemical_formula_sum`` when present); structures are built on the first query of their formula.
    """

    def __init__(self, entries: dict[str, list[Any]], builder: Callable[[Any], Structure], name: str = "reference"):
        self._entries = entries
        self._builder = builder
        self._parsed: dict[str, list[Structure]] = {}
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
    def from_structures(cls, structures: Iterable[Structure], name: str = "reference") -> ReferenceIndex:
        entries: dict[str, list[Any]] = {}
        for s in structures:
            entries.setdefault(reduced_formula(s), []).append(s)
        return cls(entries, lambda s: s, name=name)

    @classmethod
    def from_file(cls, path: str | os.PathLike, column: str | None = None, progress: bool = True) -> ReferenceIndex:
        """Index a table of reference crystals (see the class docstring)."""
        from .io import _column_values, _crystal_column, read_table, structure_from_record

        path = Path(path)
        if path.is_dir():  # e.g. a folder of CIFs
            from .io import load_crystals

            loaded = load_crystals(path, progress=progress)
            return cls.from_structures([s for s in loaded.structures if s is not None], name=str(path))
        frame, _ = read_table(path)
        col = _crystal_column(list(frame.columns), column)
        values = _column_values(frame, col)
        del frame
        entries: dict[str, list[Any]] = {}
        n_bad = 0
        with warnings.catch_warnings():  # e.g. pymatgen's "no Pauling electronegativity for He" when ordering
            warnings.simplefilter("ignore")
            for value in tqdm(values, desc=f"indexing {path.name}", unit="crystal", disable=not progress):
                try:
                    key = _formula_of(value, col)
                except Exception:
                    n_bad += 1
                    continue
                entries.setdefault(key, []).append(value)
        if n_bad:
            logger.warning("%s: %d reference rows without a readable formula were skipped", path, n_bad)
        index = cls(entries, lambda v: structure_from_record(v, col), name=str(path))
        index.n_unreadable = n_bad
        return index

    def structures(self, formula: str) -> list[Structure]:
        """Reference structures with this reduced formula (parsed once, unreadable ones dropped)."""
        if formula not in self._parsed:
            parsed = []
            for value in self._entries.get(formula, []):
                try:
                    parsed.append(self._builder(value))
                except Exception as exc:
                    self.n_unreadable += 1
                    logger.debug("unreadable reference structure (%s): %s", formula, exc)
            self._parsed[formula] = parsed
        return self._parsed[formula]

    def space_groups(self, formula: str, symprec: float = 0.1) -> list[int | None]:
        key = (formula, symprec)
        if key not in self._space_groups:
            self._space_groups[key] = [space_group_number(s, symprec) for s in self.structures(formula)]
        return self._space_groups[key]

    def is_novel(
        self,
        structure: Structure,
        matcher: StructureMatcher | None = None,
        same_space_group: bool = False,
        symprec: float = 0.01,
    ) -> bool:
        """``True`` when no reference structure of the same reduced formula matches ``structure``."""
        formula = reduced_formula(structure)
        if formula not in self._entries:
            return True
        candidates = self.structures(formula)
        if same_space_group:
            sg = space_group_number(structure, symprec)
            groups = self.space_groups(formula, symprec)
            candidates = [c for c, g in zip(candidates, groups) if sg is None or g is None or g == sg]
        matcher = _matcher(matcher)
        return not any(_fit(matcher, ref, structure) for ref in candidates)


def _formula_of(value: Any, column: str) -> str:
    """Reduced formula of a table cell without building the structure when the text states it."""
    from .io import TOKEN_ARRAYS, structure_from_record, tokens_from_record

    if column in ("tokens", TOKEN_ARRAYS):
        return Composition(tokens_from_record(value, column).formula).reduced_formula
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        m = _CIF_FORMULA.search(value)
        if m:
            text = next(g for g in m.groups() if g is not None)
            return Composition(text).element_composition.reduced_formula
    return reduced_formula(structure_from_record(value, column))


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
    ``check_sun_materials``. ``None`` inputs give ``None``.
    """
    if not isinstance(reference, ReferenceIndex):
        if isinstance(reference, (str, os.PathLike)):
            reference = ReferenceIndex.from_file(reference, progress=progress)
        else:
            reference = ReferenceIndex.from_structures(reference)
    matcher = _matcher(matcher)
    out: list[bool | None] = []
    for s in tqdm(structures, desc="novelty", unit="crystal", disable=not progress):
        if s is None:
            out.append(None)
            continue
        try:
            out.append(reference.is_novel(s, matcher, same_space_group=same_space_group, symprec=symprec))
        except Exception as exc:
            logger.warning("novelty check failed (%s); counted as not novel", exc)
            out.append(False)
    return out
