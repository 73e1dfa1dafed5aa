"""Energy above the convex hull: a universal potential's energies placed on a reference hull.

:class:`EhullCalculator` routes each crystal to the potential whose energy scale the hull has its chemical system
on (MP-style mixing: CHGNet r2SCAN by default, CHGNet 0.3.0 + MP2020 corrections for the GGA systems), optionally
relaxes it first, and returns E_hull in eV/atom or the reason it cannot. The stability reward
(:class:`~crystalformer_rl.reward_models.EhullReward`, reward ``-E_hull``) and the evaluation both use it.

:func:`compute_ehull` scores a list (``None`` entries and failures kept as reasons, batches that raise split up);
:func:`default_ehull_fn` and :func:`default_relax_fn` are the functions ``evaluate``, SFT and DPO use unless given
others: E_hull from an :class:`EhullCalculator`, and relaxation with its potential, so relaxed E_hull is consistent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from pymatgen.core import Structure
from tqdm.auto import tqdm

from ..devices import resolve_device
from .hull import ReferenceHull
from .potentials import GGA, GGA_MP2020, R2SCAN, EnergyModel, load_energy_model, mp2020_corrected_energies
from .property import CrystalProperty
from .relaxation import RelaxFn
from .structures import Failure, structure_fingerprint


logger = logging.getLogger(__name__)

__all__ = [
    "EhullCalculator",
    "EhullFn",
    "EnergyScaleMismatchError",
    "compute_ehull",
    "default_ehull_fn",
    "default_relax_fn",
]

#: ``ehull_fn(structures) -> [float | Failure | None]``: E_hull in eV/atom, or why a structure has none
EhullFn = Callable[[list[Structure]], Sequence[Any]]


class EnergyScaleMismatchError(ValueError):
    """The calculator's energies and the hull's are on different scales (errors of eV/atom would follow)."""


class EhullCalculator(CrystalProperty):
    """E_hull (eV/atom) of each crystal against a reference hull, from a universal potential.

    ``EhullCalculator()`` scores with CHGNet's r2SCAN model (weights in the ``chgnet`` wheel) against the shipped
    Materials Project hull, comparing raw r2SCAN energies, as MP does for chemical systems it has on the r2SCAN
    scale. MP keeps some systems on the GGA/GGA+U scale (e.g. anything with Fe, C or Ba; see
    :mod:`.hull`); those are scored with a GGA potential plus MP2020 corrections (``fallback_calculator``,
    CHGNet 0.3.0 by default), like the reference code. With a single-scale hull only ``calculator`` is used.

    Args:
        calculator: an :class:`EnergyModel`, a spec accepted by :func:`load_energy_model` (``"chgnet-r2scan"``,
            ``"7net-0"``, a matgl folder, ...), or an ASE calculator (then pass ``energy_scale``).
        hull: a :class:`ReferenceHull` (default: the shipped MP hull).
        fallback_calculator: potential for systems the hull has on another scale than ``calculator``'s;
            ``"auto"`` = CHGNet 0.3.0 (GGA+MP2020 scale) when needed, ``None`` = score such systems with
            ``calculator`` if its scale has references for all their elements, else ``None``.
        energy_scale: scale of a raw ASE calculator's energies (``"gga"``, ``"r2scan"``, ...).
        device: where the potentials built from specs run (``"auto"``: the rank's CUDA device, else CPU, so each
            rank scores its own samples on its own GPU); ``"cpu"``, ``"cuda:1"`` or a ``torch.device`` also work.
        relax: relax each crystal with the potential before scoring (FIRE + FrechetCellFilter; slow).
        fmax, max_steps: relaxation convergence (eV/Å) and step limit.
        ehull_range: E_hull outside this window (eV/atom) is treated as an MLIP failure (a hole or an explosion).
        max_abs_energy_per_atom: |E|/atom beyond this (eV) is an exploding energy.
        **kwargs: passed to :class:`CrystalProperty` (``cache_size``, ``min_distance``, ``max_atoms``).

    Raises:
        EnergyScaleMismatchError: if ``calculator``'s energies cannot be compared with any of the hull's scales.
    """

    name = "ehull"
    unit = "eV/atom"

    def __init__(
        self,
        calculator: EnergyModel | str | Any | None = None,
        hull: ReferenceHull | None = None,
        *,
        fallback_calculator: EnergyModel | str | Any | None = "auto",
        energy_scale: str | None = None,
        device: Any = "auto",
        relax: bool = False,
        fmax: float = 0.1,
        max_steps: int = 300,
        ehull_range: tuple[float, float] = (-1.0, 20.0),
        max_abs_energy_per_atom: float = 200.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # what the potentials and the hull were built from: a spec by its value, an object by its identity
        self._sources = tuple(
            x if x is None or isinstance(x, str) else ("object", id(x))
            for x in (calculator, fallback_calculator, energy_scale, hull)
        )
        self.device = resolve_device(device)
        self.hull = hull if hull is not None else ReferenceHull.default()
        self.calculator = load_energy_model(calculator, energy_scale=energy_scale, device=self.device)
        self.scale, self.apply_mp2020 = _match_scale(self.calculator, self.hull)
        self.fallback: EnergyModel | None = None
        self.fallback_scale: str | None = None
        self.fallback_mp2020 = False
        other_scales = [s for s in self.hull.energy_scales if s != self.scale]
        if fallback_calculator is not None and other_scales:
            if isinstance(fallback_calculator, str) and fallback_calculator == "auto":
                fallback_calculator = "chgnet-0.3.0" if GGA_MP2020 in other_scales else None
            if fallback_calculator is not None:
                self.fallback = load_energy_model(fallback_calculator, device=self.device)
                self.fallback_scale, self.fallback_mp2020 = _match_scale(self.fallback, self.hull)
                if self.fallback_scale == self.scale:
                    self.fallback = None  # same scale: nothing to fall back to
        self.relax = bool(relax)
        self.fmax = float(fmax)
        self.max_steps = int(max_steps)
        self.ehull_range = (float(ehull_range[0]), float(ehull_range[1]))
        self.max_abs_energy_per_atom = float(max_abs_energy_per_atom)
        #: relaxed structures of the last call (``relax=True`` only), keyed by the fingerprint of the unrelaxed
        #: structure; crystals that call served from the cache were not relaxed again and are not in it
        self.relaxed: dict[str, Structure] = {}

    def supported_elements(self) -> Iterable[str]:
        usable = set(self.hull.elements_for(self.scale))
        if (calc := self.calculator.supported_elements()) is not None:
            usable &= set(calc)
        if self.fallback is not None and self.fallback_scale is not None:
            fb = set(self.hull.elements_for(self.fallback_scale))
            if (fcalc := self.fallback.supported_elements()) is not None:
                fb &= set(fcalc)
            usable |= fb
        return usable

    def batch_size(self) -> int:
        return 1 if self.relax else self.calculator.batch_size()

    def value_key(self) -> tuple:
        return (
            type(self),
            self._sources,
            str(self.device),
            self.relax,
            self.fmax,
            self.max_steps,
            self.ehull_range,
            self.max_abs_energy_per_atom,
        )

    def share_with(self, other: CrystalProperty) -> None:
        """Share ``other``'s cache and its potentials (one copy of each model in memory)."""
        super().share_with(other)
        self.calculator, self.fallback = other.calculator, other.fallback

    def compute_with_reasons(self, structures: Sequence[Any]) -> list[float | Failure]:
        self.relaxed = {}  # only this call's relaxations (a long relaxation run would otherwise keep them all)
        return super().compute_with_reasons(structures)

    def scale_for(self, structure: Structure) -> str | None:
        """The energy scale this structure is scored on (``None`` if it cannot be placed)."""
        route = self._route(structure)
        return None if isinstance(route, Failure) else route[1]

    # ------------------------------------------------------------------ internals
    def _route(self, structure: Structure) -> tuple[EnergyModel, str, bool] | Failure:
        """Which potential and scale score this structure (MP-style: the scale the hull has its system on)."""
        comp = structure.composition
        preferred = self.hull.preferred_scale(comp)
        if preferred is None:
            return Failure(f"{comp.reduced_formula}: element(s) not placeable on hull {self.hull.name!r}")
        if preferred == self.scale:
            return self.calculator, self.scale, self.apply_mp2020
        if self.fallback is not None and preferred == self.fallback_scale:
            return self.fallback, self.fallback_scale, self.fallback_mp2020
        if not self.hull.missing_elements(comp, self.scale):
            return self.calculator, self.scale, self.apply_mp2020
        return Failure(
            f"{comp.reduced_formula}: element(s) {', '.join(self.hull.missing_elements(comp, self.scale))} have no "
            f"'{self.scale}' reference in the hull and no fallback potential is set"
        )

    def _energies(self, model: EnergyModel, structures: list[Structure], mp2020: bool) -> list[float | Failure]:
        """Total energies (eV) on the hull's scale (MP2020-corrected when needed)."""
        if self.relax:
            raw: list[Any] = []
            relaxed = []
            for s, r in zip(structures, model.relax_many(structures, fmax=self.fmax, steps=self.max_steps)):
                if isinstance(r, Exception):
                    raise r  # the batch is retried one by one, so this structure fails alone
                self.relaxed[structure_fingerprint(s)] = r.structure
                relaxed.append(r.structure)
                raw.append(r.energy)
            structures = relaxed
        else:
            raw = list(model.predict_energies(structures))
        out: list[float | Failure] = []
        for s, e in zip(structures, raw):
            if e is None or not math.isfinite(float(e)):
                out.append(Failure(f"non-finite energy from {model.name} ({e})"))
            elif abs(float(e)) / len(s) > self.max_abs_energy_per_atom:
                out.append(Failure(f"exploding energy from {model.name}: {float(e) / len(s):.3g} eV/atom"))
            else:
                out.append(float(e))
        if mp2020:
            ok = [i for i, e in enumerate(out) if not isinstance(e, Failure)]
            corrected = mp2020_corrected_energies([structures[i] for i in ok], [out[i] for i in ok])
            for i, c in zip(ok, corrected):
                out[i] = Failure(c) if isinstance(c, str) else c
        return out

    def _compute_batch(self, structures: list[Structure]) -> list[float | Failure]:
        return self.e_above_hull(structures)

    def e_above_hull(self, structures: list[Structure]) -> list[float | Failure]:
        """E_hull (eV/atom) of checked structures, or why each could not be placed; may raise on a model error."""
        out: list[float | Failure | None] = [None] * len(structures)
        plans: dict[int, tuple[EnergyModel, str, bool, list[int]]] = {}
        for i, s in enumerate(structures):
            route = self._route(s)
            if isinstance(route, Failure):
                out[i] = route
                continue
            model, scale, mp2020 = route
            plans.setdefault(id(model), (model, scale, mp2020, []))[3].append(i)
        lo, hi = self.ehull_range
        for model, scale, mp2020, idx in plans.values():
            if not _supports(model, structures, idx, out):
                idx = [i for i in idx if out[i] is None]
            energies = self._energies(model, [structures[i] for i in idx], mp2020) if idx else []
            for i, e in zip(idx, energies):
                if isinstance(e, Failure):
                    out[i] = e
                    continue
                comp = structures[i].composition
                try:
                    eh = self.hull.e_above_hull(comp, e, scale=scale)
                except Exception as exc:
                    out[i] = Failure(f"hull lookup failed for {comp.reduced_formula}: {exc}")
                    continue
                if not (lo <= eh <= hi):
                    out[i] = Failure(f"implausible E_hull {eh:.3g} eV/atom (outside {lo}..{hi}); MLIP failure")
                else:
                    out[i] = eh
        return [o if o is not None else Failure("not scored") for o in out]

    def __repr__(self) -> str:
        fb = f", fallback={self.fallback.name!r} [{self.fallback_scale}]" if self.fallback else ""
        return (
            f"{type(self).__name__}(calculator={self.calculator.name!r} [{self.scale}]{fb}, hull={self.hull.name!r} "
            f"{list(self.hull.energy_scales)}, relax={self.relax})"
        )


def default_ehull_fn(ehull: EhullCalculator | None = None, **kwargs: Any) -> EhullFn:
    """E_hull through ``ehull`` (``EhullCalculator(**kwargs)`` unless given), keeping its reasons.

    The calculator is built here, so a model or hull that cannot load fails once, now, instead of once per structure.
    """
    ehull = ehull if ehull is not None else EhullCalculator(**kwargs)

    def ehull_fn(structures: list[Structure]) -> list[Any]:
        return list(ehull.compute_with_reasons(structures))

    return ehull_fn


def default_relax_fn(fmax: float = 0.1, steps: int = 500, energy_model: EnergyModel | None = None) -> RelaxFn:
    """Relax with ``energy_model`` (default: the potential of ``EhullCalculator()``, CHGNet r2SCAN) in lockstep,
    one batched force call per step (``relax_fn.batched``); the function takes ``on_done(index)`` for progress and
    returns a :class:`~.relaxation.RelaxResult` (structure, energy, steps, converged) or the exception per structure."""
    model = energy_model if energy_model is not None else load_energy_model()

    def relax_fn(structures: list[Structure], on_done: Callable[[int], None] | None = None) -> list[Any]:
        return list(model.relax_many(structures, fmax=fmax, steps=steps, on_done=on_done))

    relax_fn.batched = True  # type: ignore[attr-defined]
    return relax_fn


def _as_value(item: Any) -> tuple[float | None, str | None]:
    """A float and no reason, or ``None`` and why (``None`` items, ``Failure`` objects, NaN/inf)."""
    if item is None:
        return None, "not scored (no reason given)"
    if isinstance(item, (int, float, np.integer, np.floating, np.ndarray)) and np.ndim(item) == 0:
        if isinstance(item, bool) or np.asarray(item).dtype.kind not in "iuf":
            return None, f"not a number ({item!r})"
        value = float(item)
        return (value, None) if math.isfinite(value) else (None, f"non-finite value ({value})")
    reason = getattr(item, "reason", None)
    return None, str(reason if reason is not None else item)


def compute_ehull(
    structures: Sequence[Structure | None],
    ehull_fn: EhullFn | None = None,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "E_hull",
) -> tuple[list[float | None], list[str | None]]:
    """E_hull (eV/atom) per structure and, where it is ``None``, the reason; batches that raise are split up."""
    ehull_fn = ehull_fn or default_ehull_fn()
    values: list[float | None] = [None] * len(structures)
    reasons: list[str | None] = [None] * len(structures)
    todo = [i for i, s in enumerate(structures) if s is not None]
    for i, s in enumerate(structures):
        if s is None:
            reasons[i] = "no structure"

    def run(indices: list[int]) -> None:
        try:
            results = list(ehull_fn([structures[i] for i in indices]))
            if len(results) != len(indices):
                raise RuntimeError(f"{len(results)} values for {len(indices)} structures")
        except Exception as exc:
            if len(indices) == 1:
                values[indices[0]], reasons[indices[0]] = None, f"E_hull failed: {type(exc).__name__}: {exc}"
                return
            for i in indices:
                run([i])
            return
        for i, item in zip(indices, results):
            values[i], reasons[i] = _as_value(item)

    bar = tqdm(total=len(todo), desc=desc, unit="crystal", disable=not progress)
    try:
        for start in range(0, len(todo), max(1, batch_size)):
            chunk = todo[start : start + batch_size]
            run(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    n_failed = sum(v is None for v in values)
    if n_failed:
        logger.warning("%s: %d/%d structures without a value", desc, n_failed, len(values))
    return values, reasons


def _supports(model: EnergyModel, structures: list[Structure], idx: list[int], out: list[Any]) -> bool:
    """Mark structures with elements the potential was not trained on; return True if none."""
    allowed = model.supported_elements()
    if allowed is None:
        return True
    allowed = set(allowed)
    clean = True
    for i in idx:
        bad = sorted({el.symbol for el in structures[i].composition.elements} - allowed)
        if bad:
            out[i] = Failure(f"element(s) {', '.join(bad)} not supported by {model.name}")
            clean = False
    return clean


def _match_scale(calculator: EnergyModel, hull: ReferenceHull) -> tuple[str, bool]:
    """The hull scale a calculator's energies are compared on, and whether MP2020 corrections are needed."""
    if calculator.energy_scale in hull.energy_scales:
        return calculator.energy_scale, False
    if calculator.energy_scale == GGA and GGA_MP2020 in hull.energy_scales:
        return GGA_MP2020, True
    hint = ""
    if R2SCAN in hull.energy_scales and calculator.energy_scale == GGA:
        hint = (
            " Use CHGNet's r2SCAN model (the default), or load a GGA + MP2020 hull with "
            "ReferenceHull.from_file(path, energy_scale='gga_mp2020') for GGA-scale potentials."
        )
    elif hull.energy_scales == (GGA_MP2020,):
        hint = " A 'gga_mp2020' hull needs a GGA-scale potential (CHGNet 0.3.0, SevenNet 7net-0, Orb, M3GNet ...)."
    raise EnergyScaleMismatchError(
        f"calculator {calculator.name} gives '{calculator.energy_scale}' energies but hull {hull.name!r} has "
        f"{list(hull.energy_scales)} references.{hint}"
    )
