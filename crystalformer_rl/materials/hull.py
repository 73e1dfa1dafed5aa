"""Reference convex hulls for energy above hull, with per-chemical-system phase diagrams cached.

A :class:`ReferenceHull` stores reference phases as *formation energies* (eV/atom) relative to elemental
references, together with the elemental reference energies of every energy scale it supports. A candidate's
total energy on one of those scales becomes a formation energy with that scale's references and is compared with
the hull of that chemical system. For a single-scale hull this is exactly the usual
``PhaseDiagram.get_e_above_hull`` on total energies; it also lets one hull hold phases whose energies MP
computed on different scales.

Why: the Materials Project's current thermodynamics (``mp_entries.csv.gz``, GGA/GGA+U/r2SCAN mixing scheme)
are *not* one energy scale. Chemical systems where MP has complete r2SCAN data carry raw r2SCAN energies (Si
-8.77 eV/atom), but others (anything with Ba, Be, C, Fe, Rb or Xe, most transition-metal oxides and fluorides,
...) carry GGA/GGA+U energies with MP2020 corrections, and O, Cl, Br, I and Bi appear on both scales. A single
total-energy phase diagram of that table disagrees with MP's own ``energy_above_hull`` for most entries.
The offline build (``scripts/build_mp_hull.py``) labels each entry with the scale that reproduces MP's value (and
drops entries no scale reproduces); the shipped default keeps only hull vertices, as formation energies, plus the
r2SCAN references (from MP's r2SCAN-scale elemental ground states) and GGA references (MP's GGA elemental entries).

``python scripts/build_mp_hull.py MP_ENTRIES GGA_REFS`` rebuilds the shipped files.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element


__all__ = ["DEFAULT_HULL_PATH", "DEFAULT_REFS_PATH", "ReferenceHull"]

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_HULL_PATH = DATA_DIR / "mp_hull_r2scan.csv.gz"
DEFAULT_REFS_PATH = DATA_DIR / "mp_hull_references.json"
SYSTEMS_FILE = "mp_hull_systems.csv.gz"

R2SCAN = "r2scan"
GGA_MP2020 = "gga_mp2020"
_SCALE_CODES = {"R": R2SCAN, "G": GGA_MP2020}


def _chemsys(comp: Composition) -> frozenset[str]:
    return frozenset(el.symbol for el in comp.elements)


class _LowerHull:
    """Lower convex envelope of formation energies of one chemical system, as the max of its facet planes.

    Why: E_hull needs only the hull energy at one composition. Building a pymatgen ``PhaseDiagram`` per new
    system costs ~1 ms, as much as 20 % of a CHGNet energy; a scipy ``ConvexHull`` of the same points costs a
    fraction of that, and a cached envelope is one matrix-vector product. Exact (tested against
    ``PhaseDiagram.get_hull_energy_per_atom``); elements sit at formation energy 0.
    """

    def __init__(self, elements: Sequence[str], entries: Sequence[PDEntry]) -> None:
        from scipy.spatial import ConvexHull

        self.elements = list(elements)
        n = len(self.elements)
        index = {el: k for k, el in enumerate(self.elements)}
        pts = [np.eye(n)[k] for k in range(n)]
        fs = [0.0] * n
        for e in entries:
            x = np.zeros(n)
            comp = e.composition
            for el, amt in comp.items():
                x[index[el.symbol]] = amt
            pts.append(x / x.sum())
            fs.append(e.energy / comp.num_atoms)
        x = np.array(pts)
        f = np.array(fs)
        self.planes: np.ndarray | None = None
        if n == 1 or f.min() >= -1e-12:
            return  # the elements' plane (formation energy 0) is the hull
        # coordinates: first n-1 fractions + energy; a point high above the centroid keeps the hull full-dimensional
        coords = np.column_stack([x[:, :-1], f])
        top = np.append(np.full(n - 1, 1.0 / n), f.max() + 10.0)
        hull = ConvexHull(np.vstack([coords, top]), qhull_options="Qt")
        eq = hull.equations  # a . p + b <= 0 inside; lower facets have a downward normal
        lower = eq[eq[:, -2] < -1e-9]
        # plane f = -(a_x . x + b) / a_f  ->  store as (coefficients on x_1..x_{n-1}, constant)
        self.planes = np.column_stack([-lower[:, :-2] / lower[:, -2:-1], -lower[:, -1] / lower[:, -2]])

    def energy(self, comp: Composition) -> float:
        if self.planes is None:
            return 0.0
        x = np.array([comp.get_atomic_fraction(el) for el in self.elements])
        return float(min(0.0, np.max(self.planes[:, :-1] @ x[:-1] + self.planes[:, -1])))


class _LinearProgramHull:
    """Hull energy at one composition as a linear program: min Σ λ_i f_i subject to Σ λ_i x_i = x, λ ≥ 0.

    Why: qhull's cost grows exponentially with the number of elements; generated crystals (especially from
    an undertrained model) often hold 6-8 elements, where one ``ConvexHull`` takes minutes. The LP is exact
    in any dimension and takes milliseconds. Used for systems of more than ``_LOW_DIMENSION`` elements.
    """

    def __init__(self, elements: Sequence[str], entries: Sequence[PDEntry]) -> None:
        self.elements = list(elements)
        n = len(self.elements)
        index = {el: k for k, el in enumerate(self.elements)}
        pts, fs = [np.eye(n)[k] for k in range(n)], [0.0] * n
        for e in entries:
            x = np.zeros(n)
            for el, amt in e.composition.items():
                x[index[el.symbol]] = amt
            pts.append(x / x.sum())
            fs.append(e.energy / e.composition.num_atoms)
        self.x = np.array(pts).T  # (n, entries)
        self.f = np.array(fs)

    def energy(self, comp: Composition) -> float:
        from scipy.optimize import linprog

        target = np.array([comp.get_atomic_fraction(el) for el in self.elements])
        result = linprog(self.f, A_eq=self.x, b_eq=target, bounds=(0, None), method="highs")
        if not result.success:
            raise ValueError(f"hull linear program failed for {comp.reduced_formula}: {result.message}")
        return float(min(0.0, result.fun))


_LOW_DIMENSION = 4  # up to quaternaries qhull is fast; above, the linear program


class ReferenceHull:
    """Reference phases (formation energies) plus elemental references per energy scale.

    Args:
        formation_entries: ``PDEntry`` objects whose energy is the *formation* energy of their composition (eV per
            formula as written); elemental references are implicit (formation energy 0).
        references: ``{energy_scale: {element: reference energy per atom (eV)}}``.
        name: label for logs and errors.
        default_scale: the scale assumed when a caller gives none (the first of ``references`` by default).
        scale_of_system: optional ``{chemical system: scale}`` of the scale the reference data used for it (MP's
            mixing scheme); :meth:`preferred_scale` reads it.
        max_cached: number of per-chemical-system phase diagrams kept (LRU).
    """

    def __init__(
        self,
        formation_entries: Iterable[PDEntry],
        references: Mapping[str, Mapping[str, float]],
        name: str = "custom",
        default_scale: str | None = None,
        scale_of_system: Mapping[frozenset[str], str] | None = None,
        max_cached: int = 20_000,
    ) -> None:
        self.name = name
        self.references = {k: dict(v) for k, v in references.items()}
        if not self.references:
            raise ValueError("a hull needs elemental references on at least one energy scale")
        self.energy_scales: tuple[str, ...] = tuple(self.references)
        self.default_scale = default_scale or self.energy_scales[0]
        self.scale_of_system = dict(scale_of_system or {})
        self.max_cached = int(max_cached)
        self._by_chemsys: dict[frozenset[str], list[PDEntry]] = defaultdict(list)
        n = 0
        for e in formation_entries:
            if len(e.composition.elements) > 1:
                self._by_chemsys[_chemsys(e.composition)].append(e)
                n += 1
        self.n_entries = n
        #: elements with a reference on at least one scale
        self.elements: frozenset[str] = frozenset().union(*(set(v) for v in self.references.values()))
        self._pd_cache: OrderedDict[frozenset[str], PhaseDiagram] = OrderedDict()
        self._hull_cache: OrderedDict[frozenset[str], _LowerHull] = OrderedDict()
        self.n_pd_built = 0

    @property
    def energy_scale(self) -> str:
        """The default scale (single-scale hulls have only this one)."""
        return self.default_scale

    # ------------------------------------------------------------------ constructors
    @classmethod
    def default(cls) -> ReferenceHull:
        """The shipped Materials Project hull (r2SCAN and GGA+MP2020 references); loaded once per process."""
        return _default_hull()

    @classmethod
    def from_entries(cls, entries: Iterable[PDEntry], energy_scale: str, name: str = "custom") -> ReferenceHull:
        """From entries with *total* energies on one scale (elemental references: lowest elemental entry)."""
        entries = list(entries)
        refs: dict[str, float] = {}
        for e in entries:
            if e.composition.is_element:
                el = e.composition.elements[0].symbol
                refs[el] = min(refs.get(el, math.inf), e.energy_per_atom)
        formation = []
        for e in entries:
            comp = e.composition
            if comp.is_element:
                continue
            try:
                f = e.energy_per_atom - sum(comp.get_atomic_fraction(el) * refs[el.symbol] for el in comp.elements)
            except KeyError:
                continue  # no elemental reference: the phase cannot be placed
            formation.append(PDEntry(comp, f * comp.num_atoms, name=getattr(e, "name", None)))
        return cls(formation, {energy_scale: refs}, name=name)

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        energy_scale: str,
        name: str = "custom",
        composition_col: str = "composition",
        energy_col: str | None = None,
        id_col: str | None = "material_id",
    ) -> ReferenceHull:
        """From a table of compositions and total energies (or ``energy_per_atom``) on one scale."""
        cols = [energy_col] if energy_col else ["energy_per_atom", "energy_total_eV", "energy"]
        col = next((c for c in cols if c in df.columns), None)
        if col is None:
            raise ValueError(f"no energy column among {cols} in {list(df.columns)}")
        per_atom = col == "energy_per_atom"
        ids = df[id_col].astype(str).tolist() if id_col and id_col in df.columns else [None] * len(df)
        entries = []
        for comp_str, energy, mid in zip(df[composition_col], df[col], ids):
            comp = Composition(comp_str)
            e = float(energy) * comp.num_atoms if per_atom else float(energy)
            entries.append(PDEntry(comp, e, name=mid))
        return cls.from_entries(entries, energy_scale=energy_scale, name=name)

    @classmethod
    def from_file(cls, path: str | Path, energy_scale: str, name: str | None = None, **kwargs: Any) -> ReferenceHull:
        """From a CSV(.gz) table (see :meth:`from_dataframe`) or JSON(.gz/.bz2) of ``ComputedEntry`` dicts.

        JSON may be a list of entry dicts or a dict with an ``"entries"`` list (e.g. Alexandria's
        ``convex_hull_pbe_*.json.bz2``, whose energies already carry MP2020 corrections: ``energy_scale=
        "gga_mp2020"``). Structures inside entries are dropped to save memory.
        """
        path = Path(path)
        name = name or path.name
        suffixes = "".join(path.suffixes).lower()
        if ".csv" in suffixes:
            return cls.from_dataframe(pd.read_csv(path), energy_scale=energy_scale, name=name, **kwargs)
        if ".json" in suffixes:
            from monty.io import zopen
            from pymatgen.entries.computed_entries import ComputedEntry

            with zopen(path, "rt") as fh:
                data = json.load(fh)
            if isinstance(data, dict):
                data = data.get("entries", list(data.values()))
            entries = []
            for d in data:
                d = dict(d)
                d.pop("structure", None)
                d["@class"] = "ComputedEntry"
                entries.append(ComputedEntry.from_dict(d))
            return cls.from_entries(entries, energy_scale=energy_scale, name=name)
        raise ValueError(f"unsupported hull file {path} (expected .csv[.gz] or .json[.gz|.bz2])")

    # ------------------------------------------------------------------ lookups
    def elements_for(self, scale: str) -> frozenset[str]:
        """Elements with a reference energy on ``scale``."""
        return frozenset(self.references.get(scale, {}))

    def preferred_scale(self, composition: Composition) -> str | None:
        """The scale the reference data used for this chemical system (MP-style mixing), if it can be placed.

        The system's own label if the data have it; otherwise GGA+MP2020 if any largest labelled sub-system is on
        it (MP keeps a system on GGA when a sub-system lacks r2SCAN data), else the default scale. Only scales
        with references for every element are considered.
        """
        syms = _chemsys(Composition(composition))
        usable = [s for s in self.energy_scales if syms <= self.elements_for(s)]
        if not usable:
            return None
        fallback = self.default_scale if self.default_scale in usable else usable[0]
        if len(usable) == 1 or not self.scale_of_system:
            return fallback
        for r in range(len(syms), 0, -1):
            votes = {self.scale_of_system.get(frozenset(sub)) for sub in combinations(sorted(syms), r)} - {None}
            if votes:
                choice = GGA_MP2020 if GGA_MP2020 in votes else votes.pop()
                return choice if choice in usable else fallback
        return fallback

    def _system_entries(self, key: frozenset[str]) -> list[PDEntry]:
        missing = sorted(key - self.elements)
        if missing:
            raise KeyError(f"element(s) {', '.join(missing)} not in hull {self.name!r}")
        syms = sorted(key)
        entries: list[PDEntry] = []
        if len(key) <= 12:
            for r in range(2, len(syms) + 1):
                for sub in combinations(syms, r):
                    entries.extend(self._by_chemsys.get(frozenset(sub), ()))
        else:
            for k, v in self._by_chemsys.items():
                if k <= key:
                    entries.extend(v)
        return entries

    def phase_diagram(self, elements: Iterable[str | Element]) -> PhaseDiagram:
        """pymatgen formation-energy ``PhaseDiagram`` of one chemical system (cached): decompositions, plots."""
        key = frozenset(str(getattr(e, "symbol", e)) for e in elements)
        pd_ = self._pd_cache.get(key)
        if pd_ is not None:
            self._pd_cache.move_to_end(key)
            return pd_
        syms = sorted(key)
        entries = [PDEntry(Composition(s), 0.0) for s in syms] + self._system_entries(key)
        pd_ = PhaseDiagram(entries, elements=[Element(s) for s in syms])
        self._pd_cache[key] = pd_
        if len(self._pd_cache) > self.max_cached:
            self._pd_cache.popitem(last=False)
        return pd_

    def hull_formation_energy_per_atom(self, composition: Composition | str) -> float:
        """Formation energy per atom of the hull at this composition (eV/atom); lower hull cached per system."""
        comp = Composition(composition)
        key = _chemsys(comp)
        hull = self._hull_cache.get(key)
        if hull is None:
            builder = _LowerHull if len(key) <= _LOW_DIMENSION else _LinearProgramHull
            hull = builder(sorted(key), self._system_entries(key))
            self.n_pd_built += 1
            self._hull_cache[key] = hull
            if len(self._hull_cache) > self.max_cached:
                self._hull_cache.popitem(last=False)
        else:
            self._hull_cache.move_to_end(key)
        return hull.energy(comp)

    def formation_energy_per_atom(
        self, composition: Composition | str, energy: float, scale: str | None = None
    ) -> float:
        """Formation energy per atom of a phase of total energy ``energy`` (eV) on ``scale``."""
        comp = Composition(composition)
        scale = scale or self.default_scale
        refs = self.references.get(scale)
        if refs is None:
            raise KeyError(f"hull {self.name!r} has no '{scale}' references (has {list(self.energy_scales)})")
        missing = sorted({el.symbol for el in comp.elements} - set(refs))
        if missing:
            raise KeyError(f"element(s) {', '.join(missing)} have no '{scale}' reference in hull {self.name!r}")
        return float(energy) / comp.num_atoms - sum(
            comp.get_atomic_fraction(el) * refs[el.symbol] for el in comp.elements
        )

    def e_above_hull(self, composition: Composition | str, energy: float, scale: str | None = None) -> float:
        """E_hull (eV/atom) of a phase with this composition and total energy; negative below the hull."""
        comp = Composition(composition)
        return self.formation_energy_per_atom(comp, energy, scale) - self.hull_formation_energy_per_atom(comp)

    def missing_elements(self, composition: Composition, scale: str | None = None) -> list[str]:
        have = self.elements if scale is None else self.elements_for(scale)
        return sorted({el.symbol for el in composition.elements} - have)

    def clear_cache(self) -> None:
        self._pd_cache.clear()
        self._hull_cache.clear()

    def __repr__(self) -> str:
        return (
            f"ReferenceHull(name={self.name!r}, scales={list(self.energy_scales)}, entries={self.n_entries}, "
            f"elements={len(self.elements)})"
        )


@lru_cache(maxsize=1)
def _default_hull() -> ReferenceHull:
    df = pd.read_csv(DEFAULT_HULL_PATH)
    refs = json.loads(DEFAULT_REFS_PATH.read_text())
    entries = [
        PDEntry(Composition(c), float(f) * Composition(c).num_atoms, name=mid)
        for mid, c, f in zip(df["material_id"], df["composition"], df["formation_energy_per_atom"])
    ]
    systems = pd.read_csv(DATA_DIR / SYSTEMS_FILE)
    scale_of_system = {frozenset(k.split("-")): _SCALE_CODES[v] for k, v in zip(systems["chemsys"], systems["scale"])}
    return ReferenceHull(
        entries,
        {R2SCAN: refs["references"][R2SCAN], GGA_MP2020: refs["references"][GGA_MP2020]},
        name="MP-2024 (r2SCAN/GGA+U mixing)",
        default_scale=R2SCAN,
        scale_of_system=scale_of_system,
    )
