"""A bounded memory of produced structures for "made before?" look-ups (the duplicate test of S.U.N.-aware rewards).

Structures are bucketed by reduced composition and compared with ``StructureMatcher`` only within their bucket, as
:mod:`.matching` does for uniqueness and novelty; an identical cell is found by its fingerprint without matching.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from .matching import fit_or_reason
from .structures import structure_fingerprint


logger = logging.getLogger(__name__)

__all__ = ["StructureArchive", "composition_key"]


def composition_key(structure: Structure) -> str:
    """Reduced formula without oxidation states: the bucket key, as :func:`~.matching.reduced_formula`."""
    return structure.composition.element_composition.reduced_formula


class _Entry:
    """One archived structure, stored compactly (lattice, species, fractional coordinates: ~1 kB)."""

    __slots__ = ("formula", "lattice", "species", "frac")

    def __init__(self, formula: str, lattice: np.ndarray, species: tuple[str, ...], frac: np.ndarray) -> None:
        self.formula, self.lattice, self.species, self.frac = formula, lattice, species, frac

    @classmethod
    def of(cls, structure: Structure, formula: str) -> _Entry:
        return cls(
            formula,
            np.array(structure.lattice.matrix, dtype=np.float64),
            tuple(str(sp) for sp in structure.species),
            np.array(structure.frac_coords, dtype=np.float64),
        )

    def structure(self) -> Structure:
        return Structure(Lattice(self.lattice), list(self.species), self.frac)


class StructureArchive:
    """A bounded memory of structures, bucketed by reduced composition, for "produced before?" look-ups.

    :meth:`find` compares a query with the archived structures of its reduced composition only (an identical cell
    is found by its :func:`structure_fingerprint` without matching), most recently stored or matched first, with
    ``StructureMatcher``; :meth:`add` stores one. Memory is bounded twice: ``max_size`` structures in all and
    ``max_per_composition`` per reduced composition (which also bounds the matcher calls per query).

    Args:
        max_size: structures kept in all; ``0`` keeps none (nothing is ever a duplicate).
        max_per_composition: structures kept per reduced composition (``None``: only ``max_size`` applies).
        policy: which structure goes when a bound is hit: ``"lru"`` (default; a structure matched again counts as
            recent, so motifs the policy keeps producing stay remembered) or ``"fifo"`` (the oldest stored).
        matcher: the ``StructureMatcher`` (default: pymatgen's defaults, as evaluation).
    """

    def __init__(
        self,
        max_size: int = 10_000,
        max_per_composition: int | None = 32,
        policy: str = "lru",
        matcher: StructureMatcher | None = None,
    ) -> None:
        if policy not in ("lru", "fifo"):
            raise ValueError(f"archive policy must be 'lru' or 'fifo', not {policy!r}")
        self.max_size = max(int(max_size), 0)
        self.max_per_composition = None if max_per_composition is None else max(int(max_per_composition), 0)
        self.policy = policy
        self.matcher = matcher if matcher is not None else StructureMatcher()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # key -> entry, eviction order (oldest first)
        self._by_formula: dict[str, OrderedDict[str, None]] = {}  # formula -> keys, eviction order
        self.n_evicted = 0
        self.n_comparisons = 0  # StructureMatcher.fit calls made by find
        self.n_matcher_errors = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def n_compositions(self) -> int:
        return len(self._by_formula)

    @property
    def enabled(self) -> bool:
        return self.max_size > 0 and self.max_per_composition != 0

    def sizes(self) -> dict[str, int]:
        """Archived structures per reduced composition."""
        return {formula: len(keys) for formula, keys in self._by_formula.items()}

    def clear(self) -> None:
        self._entries.clear()
        self._by_formula.clear()

    def find(
        self,
        structure: Structure,
        formula: str | None = None,
        fingerprint: str | None = None,
        touch: bool = True,
    ) -> str | None:
        """Key of an archived structure matching ``structure`` (same reduced composition), ``None`` if none does.

        A matcher error on a pair counts as "no match" (as in :func:`~.matching.deduplicate`). With ``touch``
        and the ``"lru"`` policy the match becomes the most recent entry.
        """
        if not self._entries:
            return None
        formula = composition_key(structure) if formula is None else formula
        key = structure_fingerprint(structure) if fingerprint is None else fingerprint
        hit = key if key in self._entries else None
        if hit is None:
            for candidate in reversed(list(self._by_formula.get(formula, ()))):
                self.n_comparisons += 1
                if self._fit(self._entries[candidate].structure(), structure):
                    hit = candidate
                    break
        if hit is not None and touch and self.policy == "lru":
            self._touch(hit)
        return hit

    def add(self, structure: Structure, formula: str | None = None, fingerprint: str | None = None) -> str:
        """Store ``structure`` (no matching: call :meth:`find` first); returns its key (its fingerprint)."""
        formula = composition_key(structure) if formula is None else formula
        key = structure_fingerprint(structure) if fingerprint is None else fingerprint
        if key in self._entries:
            if self.policy == "lru":
                self._touch(key)
            return key
        self._insert(key, _Entry.of(structure, formula))
        return key

    def _insert(self, key: str, entry: _Entry) -> None:
        if not self.enabled:
            return
        self._entries[key] = entry
        bucket = self._by_formula.setdefault(entry.formula, OrderedDict())
        bucket[key] = None
        if self.max_per_composition is not None and len(bucket) > self.max_per_composition:
            self._evict(next(iter(bucket)))
        while len(self._entries) > self.max_size:
            self._evict(next(iter(self._entries)))

    def _touch(self, key: str) -> None:
        self._entries.move_to_end(key)
        self._by_formula[self._entries[key].formula].move_to_end(key)

    def _evict(self, key: str) -> None:
        entry = self._entries.pop(key)
        bucket = self._by_formula[entry.formula]
        bucket.pop(key, None)
        if not bucket:
            del self._by_formula[entry.formula]
        self.n_evicted += 1

    def _fit(self, a: Structure, b: Structure) -> bool:
        matched, reason = fit_or_reason(self.matcher, a, b)
        if reason is not None:  # a degenerate cell must not end a training step
            self.n_matcher_errors += 1
            logger.debug("not matched in the archive: %s", reason)
        return matched

    # ------------------------------------------------------------------ persistence (e.g. beside a checkpoint)
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable content, oldest first (:meth:`load_state_dict` restores the eviction order)."""
        return {
            "version": 1,
            "entries": [
                {
                    "key": key,
                    "formula": e.formula,
                    "lattice": e.lattice.tolist(),
                    "species": list(e.species),
                    "frac_coords": e.frac.tolist(),
                }
                for key, e in self._entries.items()
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the content by ``state`` (bounds of this archive apply; the oldest entries go first)."""
        self.clear()
        for row in state.get("entries", []):
            entry = _Entry(
                str(row["formula"]),
                np.asarray(row["lattice"], dtype=np.float64).reshape(3, 3),
                tuple(str(x) for x in row["species"]),
                np.asarray(row["frac_coords"], dtype=np.float64).reshape(-1, 3),
            )
            self._insert(str(row["key"]), entry)
