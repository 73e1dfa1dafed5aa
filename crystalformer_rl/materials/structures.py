"""One crystal, checked and named: why it cannot be scored (:class:`Failure`, :func:`check_structure`), a cheap
identity for caches (:func:`structure_fingerprint`), and the plain-element copy the potentials expect."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Element, Structure


__all__ = ["Failure", "check_structure", "structure_fingerprint", "without_oxidation_states"]


@dataclass(frozen=True)
class Failure:
    """Why a crystal got no score; kept instead of raising so one bad sample cannot end a training step."""

    reason: str

    def __str__(self) -> str:
        return self.reason


def structure_fingerprint(structure: Structure, decimals: int = 4) -> str:
    """A cheap, order-independent hash of a structure: identical cells (up to site order) share a cache entry.

    Fractional coordinates are wrapped into [0, 1) and rounded, sites sorted by (Z, coordinates); this catches
    the exact repeats RL sampling produces without paying for a ``StructureMatcher``.
    """
    lat = np.round(np.asarray(structure.lattice.matrix, dtype=float), decimals)
    frac = np.round(np.asarray(structure.frac_coords, dtype=float), decimals) % 1.0
    frac = np.round(frac, decimals) % 1.0
    z = np.array([getattr(sp, "Z", 0) for sp in structure.species], dtype=float)
    rows = np.column_stack([z, frac])
    rows = rows[np.lexsort(rows.T[::-1])]
    h = hashlib.blake2b(digest_size=16)
    h.update(lat.tobytes())
    h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()


def check_structure(
    structure: Structure,
    *,
    min_distance: float = 0.5,
    max_atoms: int = 500,
    min_volume_per_atom: float = 1.0,
    max_volume_per_atom: float = 500.0,
    elements: Iterable[str] | None = None,
) -> str | None:
    """Return why a structure is unphysical for scoring (``None`` if it is fine).

    Catches what makes MLIPs return garbage or crash: empty cells, NaN/inf coordinates, degenerate lattices,
    overlapping atoms (closer than ``min_distance`` Å, including periodic images), absurd densities and
    elements the model or hull does not know.
    """
    n = len(structure)
    if n == 0:
        return "empty structure (no sites)"
    if n > max_atoms:
        return f"too many atoms ({n} > {max_atoms})"
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if not np.all(np.isfinite(matrix)):
        return "non-finite lattice"
    if not np.all(np.isfinite(structure.frac_coords)):
        return "non-finite coordinates"
    volume = abs(float(np.linalg.det(matrix)))
    if not math.isfinite(volume) or volume < 1e-6:
        return "degenerate lattice (zero volume)"
    vpa = volume / n
    if vpa < min_volume_per_atom:
        return f"volume per atom {vpa:.3g} Å^3 below {min_volume_per_atom}"
    if vpa > max_volume_per_atom:
        return f"volume per atom {vpa:.3g} Å^3 above {max_volume_per_atom}"
    if not structure.is_ordered:
        return "disordered structure (partial occupancies)"
    for sp in structure.composition.elements:
        if getattr(sp, "Z", 0) < 1:
            return f"not a chemical element: {sp}"
    if elements is not None:
        allowed = set(elements)
        missing = sorted({el.symbol for el in structure.composition.elements} - allowed)
        if missing:
            return f"element(s) {', '.join(missing)} not supported"
    if min_distance > 0:
        # Any pair (or an atom and its own periodic image) closer than min_distance counts as overlap.
        _, _, _, dists = structure.get_neighbor_list(r=min_distance, exclude_self=True)
        if len(dists):
            return f"overlapping atoms (distance {float(dists.min()):.3f} Å < {min_distance} Å)"
    return None


def without_oxidation_states(structure: Structure) -> Structure:
    """``structure`` with plain elements (a copy when it carries oxidation states; the input is never changed)."""
    if any(not isinstance(sp, Element) for sp in structure.species):
        structure = structure.copy()
        structure.remove_oxidation_states()
    return structure
