"""Structure and composition validity, with the semantics of CDVAE's ``compute_metrics`` (as CrystalFormer reports).

* structure validity: every interatomic distance (minimum image, distinct sites) is at least 0.5 Å and the cell
  volume is at least 0.1 Å^3;
* composition validity (SMACT): a single element, or an all-metal alloy, is valid; otherwise the gcd-reduced
  composition must admit a charge-neutral assignment of oxidation states that also passes the Pauling
  electronegativity test (cations less electronegative than anions).

Oxidation states: SMACT's 2014 lists (``oxidation_states_smact14``) by default, close to the lists of SMACT 2.x
behind every published composition-validity number (CDVAE, DiffCSP, CrystalFormer, ...); SMACT 4 changed its default
lists, which moves about 14 % of generated crystals across the line. ``"cdvae"`` is SMACT 2.2.1's data itself (the
version CDVAE pinned; shipped): it differs from the 2014 lists for a few elements (Ir -2 / -3, Pauling data), 2 of
1,200 generated crystals, and is what the MP-20 benchmark uses. Other sets (``"default"`` = SMACT's current default,
``"icsd16"``, ``"icsd24"``, ``"wiki"``, ``"sp"``) are options.

Both are cheap, so they run on every sample; the composition test is memoised per reduced composition.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pymatgen.core import Composition, Element, Structure


logger = logging.getLogger(__name__)

__all__ = [
    "check_composition_validity",
    "check_species",
    "check_structure_validity",
    "composition_validity",
    "structure_validity",
]


def check_species(structure: Structure) -> str | None:
    """Why the sites of ``structure`` are no crystal of whole atoms of real elements (a partially occupied or mixed
    site, a dummy species such as ``Qq`` read from a CIF), or ``None``."""
    if not structure.is_ordered:
        return "partial occupancy (a site holds a fraction of an atom or mixed species)"
    for species in structure.composition.elements:
        if not isinstance(species, Element) and not isinstance(getattr(species, "element", None), Element):
            return f"not a chemical element: {getattr(species, 'symbol', species)}"
    return None


def check_structure_validity(structure: Structure, cutoff: float = 0.5, min_volume: float = 0.1) -> str | None:
    """Why ``structure`` is structurally invalid, or ``None`` when it is valid.

    As CDVAE, only distances between distinct sites are tested (a site and its own periodic image are not):
    keeping that keeps validity rates comparable with published numbers. A partially occupied site or a species
    that is no element (:func:`check_species`) is invalid too.
    """
    if len(structure) == 0:
        return "empty structure"
    if (reason := check_species(structure)) is not None:
        return reason
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if not np.all(np.isfinite(matrix)) or not np.all(np.isfinite(structure.frac_coords)):
        return "non-finite lattice or coordinates"
    volume = abs(float(np.linalg.det(matrix)))
    if not volume >= min_volume:
        return f"volume {volume:.3g} Å^3 below {min_volume}"
    if len(structure) > 1:
        dist = np.array(structure.distance_matrix, dtype=float)
        np.fill_diagonal(dist, np.inf)
        dmin = float(dist.min())
        if not dmin >= cutoff:
            return f"atoms {dmin:.3f} Å apart (< {cutoff} Å)"
    return None


def structure_validity(structure: Structure, cutoff: float = 0.5, min_volume: float = 0.1) -> bool:
    """CDVAE structure validity: all pairwise distances ≥ ``cutoff`` Å and volume ≥ ``min_volume`` Å^3."""
    return check_structure_validity(structure, cutoff=cutoff, min_volume=min_volume) is None


def _integer_counts(composition: Composition | Structure | Mapping | str) -> dict[str, int]:
    if isinstance(composition, Structure):
        composition = composition.composition
    elif not isinstance(composition, Composition):
        composition = Composition(composition)
    counts: dict[str, int] = {}
    for species, amount in composition.items():
        symbol = getattr(species, "symbol", None) or getattr(getattr(species, "element", None), "symbol", None)
        if symbol is None:
            raise ValueError(f"not an element: {species}")
        counts[symbol] = counts.get(symbol, 0) + amount
    out = {}
    for symbol, amount in counts.items():
        if abs(amount - round(amount)) > 1e-6 or round(amount) <= 0:
            raise ValueError(f"non-integer amount of {symbol} ({amount}): partial occupancy")
        out[symbol] = int(round(amount))
    return out


OXIDATION_STATE_SETS = ("smact14", "cdvae", "default", "icsd16", "icsd24", "wiki", "sp")
#: SMACT 2.2.1's element data (oxidation states, Pauling electronegativities, metals), the version CDVAE pinned:
#: with ``oxidation_states="cdvae"`` composition validity is CDVAE's exactly (SMACT 4's 2014 lists differ for a few
#: elements, e.g. Ir -3 vs -2). SMACT is MIT-licensed (materials/data/README.md).
CDVAE_SMACT_DATA = Path(__file__).resolve().parent / "data" / "smact_2_2_1.json"


@functools.cache
def _cdvae_smact() -> dict:
    return json.loads(CDVAE_SMACT_DATA.read_text())


def _oxidation_states(element, oxidation_states: str) -> list[int]:
    if oxidation_states not in OXIDATION_STATE_SETS:
        raise ValueError(f"oxidation_states={oxidation_states!r}: use one of {', '.join(OXIDATION_STATE_SETS)}")
    name = "oxidation_states" if oxidation_states == "default" else f"oxidation_states_{oxidation_states}"
    return list(getattr(element, name) or [])


@functools.lru_cache(maxsize=65536)
def _smact_check(
    symbols: tuple[str, ...],
    counts: tuple[int, ...],
    use_pauling_test: bool,
    include_alloys: bool,
    oxidation_states: str = "smact14",
) -> str | None:
    import smact

    cdvae = _cdvae_smact() if oxidation_states == "cdvae" else None
    if len(set(symbols)) == 1:
        return None
    if include_alloys and all(s in (cdvae["metals"] if cdvae else smact.metals) for s in symbols):
        return None

    gcd = math.gcd(*counts)
    stoichs = [(c // gcd,) for c in counts]
    if cdvae:
        unknown = [s for s in symbols if s not in cdvae["oxidation_states"]]
        if unknown:
            return f"no SMACT data ({', '.join(unknown)})"
        states = [cdvae["oxidation_states"][s] for s in symbols]
        electronegativities = [cdvae["pauling_eneg"][s] for s in symbols]
    else:
        try:
            elements = [smact.Element(s) for s in symbols]
        except Exception as exc:  # an element SMACT has no data for
            return f"no SMACT data ({exc})"
        states = [_oxidation_states(e, oxidation_states) for e in elements]
        with warnings.catch_warnings():  # SMACT warns and gives NaN for elements without one (noble gases)
            warnings.simplefilter("ignore")
            electronegativities = [e.pauling_eneg for e in elements]
    missing = [s for s, ox in zip(symbols, states) if not ox]
    if missing:
        return f"no oxidation states for {', '.join(missing)}"

    charges = [[ox * n for ox in ox_list] for ox_list, (n,) in zip(states, stoichs)]
    if not _can_neutralise(charges):
        return "no charge-neutral combination of oxidation states"
    if not use_pauling_test:
        return None
    # Missing electronegativities pass, as in CDVAE (there the comparison raised TypeError, caught as "OK").
    if any(x is None or math.isnan(x) for x in electronegativities):
        return None
    # SMACT's Pauling test: every cation less electronegative than every anion, i.e. some cut c with cations at
    # electronegativity <= c and anions above it (c = the most electronegative cation). Trying each cut is exact.
    for cut in (-math.inf, *sorted(set(electronegativities))):
        allowed = [
            [q for q, ox in zip(qs, ox_list) if (ox >= 0 if x <= cut else ox <= 0)]
            for qs, ox_list, x in zip(charges, states, electronegativities)
        ]
        if _can_neutralise(allowed):
            return None
    return "charge-neutral oxidation states all fail the Pauling electronegativity test"


def _can_neutralise(charges: list[list[int]]) -> bool:
    """Whether picking one charge per element can sum to zero.

    The same answer as CDVAE's loop over every combination of oxidation states (``itertools.product``), by the set
    of reachable partial sums: that loop ran over 12 minutes on a sampled 14-element crystal, this takes milliseconds.
    """
    reachable = {0}
    for options in charges:
        reachable = {s + q for s in reachable for q in set(options)}
        if not reachable:
            return False
    return 0 in reachable


def check_composition_validity(
    composition: Composition | Structure | Mapping | str,
    use_pauling_test: bool = True,
    include_alloys: bool = True,
    oxidation_states: str = "smact14",
) -> str | None:
    """Why a composition fails the SMACT test of CDVAE (see :func:`composition_validity`), or ``None``."""
    try:
        counts = _integer_counts(composition)
    except Exception as exc:
        return f"unusable composition: {exc}"
    if not counts:
        return "empty composition"
    symbols = tuple(sorted(counts))
    return _smact_check(symbols, tuple(counts[s] for s in symbols), use_pauling_test, include_alloys, oxidation_states)


def composition_validity(
    composition: Composition | Structure | Mapping | str,
    use_pauling_test: bool = True,
    include_alloys: bool = True,
    oxidation_states: str = "smact14",
) -> bool:
    """SMACT composition validity as CDVAE's ``smact_validity``.

    Single elements and (with ``include_alloys``) all-metal compositions are valid. Otherwise the element counts
    are reduced by their gcd and every combination of the ``oxidation_states`` set (SMACT's 2014 lists, as
    published numbers use; see the module docstring) is tried; the composition
    is valid when one combination is charge neutral at exactly these counts (SMACT ``neutral_ratios`` with
    threshold = the largest count) and, with ``use_pauling_test``, passes SMACT's Pauling electronegativity test.
    """
    return check_composition_validity(composition, use_pauling_test, include_alloys, oxidation_states) is None
