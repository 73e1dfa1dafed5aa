"""Relaxation: ASE's FIRE on a FrechetCellFilter, every structure of a batch in lockstep, one path for all.

:func:`relax_in_lockstep` is the package's one FIRE set-up. It steps many structures together, each with its own
optimizer exactly as ``FIRE(FrechetCellFilter(atoms)).run(fmax, steps)`` would, and gets the energies, forces and
stresses of every unconverged structure from one batched call per step. Everything else relaxes through it:
``EnergyModel.relax_many`` / ``relax`` (a potential's batched forces), :func:`relax_structure` (any ASE calculator),
and :func:`relax_in_chunks` (chunk by chunk, each yielded as it finishes: ``evaluate`` writes it at once) with
:func:`relax_structures` over it, the driver of SFT, DPO pairs and the benchmarks; both keep a reason for every
structure they could not relax.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator
from pymatgen.core import Structure
from tqdm.auto import tqdm

from .matching import unmatchable_reason


logger = logging.getLogger(__name__)

__all__ = [
    "RelaxFn",
    "RelaxOutcome",
    "RelaxResult",
    "calculator_efs",
    "primitive_cell",
    "relax_in_chunks",
    "relax_in_lockstep",
    "relax_structure",
    "relax_structures",
    "unrelaxable_reason",
]

#: ``relax_fn(structures[, on_done]) -> [RelaxResult | (structure, energy) | Exception | None]``, one per input
RelaxFn = Callable[..., Sequence[Any]]


@dataclass
class RelaxResult:
    """Outcome of an MLIP relaxation (FIRE on positions and cell)."""

    structure: Structure
    energy: float
    converged: bool
    steps: int


class _PrecomputedResults(Calculator):
    """An ASE calculator that only returns what the lockstep driver stored for the current atoms."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=None, system_changes=None):
        raise RuntimeError("atoms moved without a batched evaluation (lockstep relaxation bug)")

    def store(self, atoms, energy: float, forces: np.ndarray, stress: np.ndarray) -> None:
        self.atoms = atoms.copy()
        self.results = {"energy": energy, "free_energy": energy, "forces": forces, "stress": stress}


def relax_in_lockstep(
    structures: Sequence[Structure], predict_efs, fmax: float = 0.1, steps: int = 500, on_done=None
) -> list[RelaxResult | Exception]:
    """Relax structures with ASE's own FIRE on a FrechetCellFilter each, stepping all of them together.

    Each optimizer runs exactly as `FIRE(...).run(fmax, steps)` would (same convergence test, step count and
    trajectory: the one-by-one result), but the forces and stresses of all unconverged structures come from one
    `predict_efs(structures)` call per step, so a batched potential does the work of many calls in one. A
    structure whose evaluation raises fails alone (its exception is its result). `on_done(index)` is called as
    each structure finishes. Warnings (e.g. scipy's "logm result may be inaccurate" from the cell filter) are
    counted and logged once.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    n = len(structures)
    results: list[RelaxResult | Exception | None] = [None] * n
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in structures]
    calculators = [_PrecomputedResults() for _ in range(n)]
    optimizers = []
    for a, calc in zip(atoms, calculators):
        a.calc = calc
        opt = FIRE(FrechetCellFilter(a), logfile=None)
        opt.fmax = fmax
        optimizers.append(opt)

    def finish(i: int, outcome) -> None:
        results[i] = outcome
        if on_done is not None:
            on_done(i)

    def evaluate(indices: list[int]) -> list[int]:
        """Store energy, forces and stress for `indices`; return those that could be evaluated."""
        try:
            batch = predict_efs([AseAtomsAdaptor.get_structure(atoms[i]) for i in indices])
            pairs = list(zip(indices, batch, strict=True))
        except Exception:
            if len(indices) == 1:
                raise
            pairs = []
            for i in indices:  # isolate the structure that breaks the batch
                try:
                    pairs.append((i, predict_efs([AseAtomsAdaptor.get_structure(atoms[i])])[0]))
                except Exception as exc:
                    finish(i, exc)
        ok = []
        for i, (energy, forces, stress) in pairs:
            if not (np.isfinite(energy) and np.all(np.isfinite(forces)) and np.all(np.isfinite(stress))):
                finish(i, FloatingPointError("non-finite energy, forces or stress"))
                continue
            calculators[i].store(atoms[i], float(energy), np.asarray(forces, float), np.asarray(stress, float))
            ok.append(i)
        return ok

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        active = list(range(n))
        try:
            active = evaluate(active)
        except Exception as exc:
            active, results = [], [exc] * n
        while active:
            moved = []
            for i in active:
                opt = optimizers[i]
                converged = opt.gradient_converged(opt.optimizable.get_gradient())
                if converged or opt.nsteps >= steps:
                    energy = float(atoms[i].get_potential_energy())
                    relaxed = AseAtomsAdaptor.get_structure(atoms[i])
                    finish(i, RelaxResult(structure=relaxed, energy=energy, converged=converged, steps=opt.nsteps))
                    continue
                opt.step()
                opt.nsteps += 1
                moved.append(i)
            if len(moved) == 1:
                try:
                    active = evaluate(moved)
                except Exception as exc:
                    finish(moved[0], exc)
                    active = []
            else:
                active = evaluate(moved) if moved else []
    if caught:
        counts: dict[str, int] = {}
        for w in caught:
            key = f"{w.category.__name__}: {str(w.message).splitlines()[0][:80]}"
            counts[key] = counts.get(key, 0) + 1
        summary = "; ".join(f"{k} (x{v})" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        logger.info("relaxation of %d structures: %d warnings: %s", n, len(caught), summary)
    return results  # type: ignore[return-value]


def calculator_efs(calculator: Any) -> Callable[[Sequence[Structure]], list[tuple[float, np.ndarray, np.ndarray]]]:
    """``predict_efs`` of an ASE calculator: energy (eV), forces (n, 3) eV/Å and stress (ASE convention, eV/Å^3)
    per structure, one structure at a time; raises on failure."""

    def predict_efs(structures: Sequence[Structure]) -> list[tuple[float, np.ndarray, np.ndarray]]:
        from pymatgen.io.ase import AseAtomsAdaptor

        out = []
        for structure in structures:
            atoms = AseAtomsAdaptor.get_atoms(structure)
            atoms.calc = calculator
            out.append((float(atoms.get_potential_energy()), atoms.get_forces(), atoms.get_stress(voigt=False)))
        return out

    return predict_efs


def relax_structure(structure: Structure, calculator: Any, fmax: float = 0.1, steps: int = 500) -> RelaxResult:
    """Relax one structure with any ASE calculator (FIRE on a FrechetCellFilter, through :func:`relax_in_lockstep`);
    raises what the calculator raised."""
    result = relax_in_lockstep([structure], calculator_efs(calculator), fmax=fmax, steps=steps)[0]
    if isinstance(result, Exception):
        raise result
    return result


@dataclass
class RelaxOutcome:
    """What relaxing one structure gave: the relaxed structure and its total energy (eV), or the reason there is
    none; FIRE's step count and whether it converged, where the relaxer says (a :class:`RelaxResult`)."""

    structure: Structure | None
    energy: float | None
    reason: str | None
    steps: int | None = None
    converged: bool | None = None


def unrelaxable_reason(structure: Structure | None) -> str | None:
    """Why ``structure`` is not given to a relaxer (no structure, a collapsed cell), else ``None``."""
    if structure is None:
        return "no structure"
    if (why := unmatchable_reason(structure)) is not None:  # a collapsed cell would hang CHGNet's neighbour search
        return f"not relaxed: {why}"
    return None


def relax_in_chunks(
    structures: Sequence[Structure | None],
    indices: Sequence[int],
    relax_fn: RelaxFn,
    chunk_size: int = 64,
    primitive: bool = False,
    progress: bool = True,
    done: int = 0,
) -> Iterator[tuple[list[int], list[RelaxOutcome]]]:
    """Relax ``structures[i]`` for ``i`` in ``indices``, ``chunk_size`` at a time, yielding each chunk's indices
    and :class:`RelaxOutcome` as soon as the chunk is finished (so a caller can write it before the next starts).

    A batched ``relax_fn`` (``relax_fn.batched``, as :func:`~.ehull.default_relax_fn` makes) gets a whole chunk in
    one call (the structures step in lockstep) and reports each as it finishes; should that call raise as a whole,
    the chunk's structures are tried again one at a time. Any other ``relax_fn`` gets one structure at a time, so
    that a relaxation that blows up costs only its own row. Either way a failure is that row's reason, never the
    run's. ``primitive`` relaxes each crystal's primitive cell (:func:`primitive_cell`).
    ``done`` relaxations finished earlier start the progress bar.
    """
    batched = getattr(relax_fn, "batched", False)
    size = max(1, chunk_size)
    bar = tqdm(total=done + len(indices), initial=done, desc="relaxing", unit="crystal", disable=not progress)
    try:
        for start in range(0, len(indices), size):
            chunk = list(indices[start : start + size])
            todo = [structures[i] for i in chunk]
            if primitive:
                todo = [primitive_cell(s) for s in todo]
            if batched:
                counted = bar.n
                results = _call(relax_fn, todo, on_done=lambda _: bar.update(1))
                if len(todo) > 1 and all(r is results[0] for r in results) and isinstance(results[0], Exception):
                    # the whole call raised: one crystal must not fail the others, so each is tried on its own
                    logger.warning(
                        "relaxation: a batch of %d failed (%s); relaxing them one by one", len(todo), results[0]
                    )
                    results = [r for s in todo for r in _call(relax_fn, [s])]
                bar.update(counted + len(todo) - bar.n)  # whatever the calls reported, the chunk is done
            else:
                results = []
                for s in todo:
                    results.extend(_call(relax_fn, [s]))
                    bar.update(1)
            yield chunk, [_relaxation_outcome(r) for r in results]
    finally:
        bar.close()


def _call(relax_fn: RelaxFn, structures: list[Structure], **kwargs: Any) -> list[Any]:
    """``relax_fn(structures)``, one result per structure: a call that raises is every structure's exception."""
    try:
        results = list(relax_fn(structures, **kwargs))
        if len(results) != len(structures):
            raise RuntimeError(f"{len(results)} results for {len(structures)} structures")
    except Exception as exc:
        results = [exc] * len(structures)
    return results


def relax_structures(
    structures: Sequence[Structure | None],
    relax_fn: RelaxFn,
    fmax: float = 0.1,
    steps: int = 500,
    progress: bool = True,
    chunk_size: int = 64,
    primitive: bool = False,
) -> tuple[list[Structure | None], list[float | None], list[str | None]]:
    """Relaxed structure, its total energy (eV) and the failure reason, per input.

    The structures go through :func:`relax_in_chunks` (``chunk_size`` in lockstep with a batched ``relax_fn``, one
    at a time with any other); a failure is that row's reason, never the run's. A collapsed cell
    (:func:`~.matching.unmatchable_reason`) is not relaxed: its neighbour list would span millions of periodic
    images. ``primitive`` relaxes each crystal's primitive cell (:func:`primitive_cell`), as the reference's
    ``mlff_relax.py`` can; the energy is then that of the primitive cell (the same per atom). ``fmax`` and
    ``steps`` are the caller's record: ``relax_fn`` carries its own.
    """
    relaxed: list[Structure | None] = [None] * len(structures)
    energies: list[float | None] = [None] * len(structures)
    reasons: list[str | None] = [unrelaxable_reason(s) for s in structures]
    todo = [i for i, reason in enumerate(reasons) if reason is None]
    for chunk, outcomes in relax_in_chunks(structures, todo, relax_fn, chunk_size, primitive, progress):
        for i, outcome in zip(chunk, outcomes):
            relaxed[i], energies[i], reasons[i] = outcome.structure, outcome.energy, outcome.reason
    n_failed = sum(relaxed[i] is None for i, s in enumerate(structures) if s is not None)
    if n_failed:
        logger.warning("relaxation: %d/%d structures not relaxed", n_failed, len(structures))
    return relaxed, energies, reasons


def primitive_cell(structure: Structure, tolerance: float = 0.01) -> Structure:
    """The primitive cell of ``structure`` (pymatgen, translations exact to ``tolerance`` Å), else ``structure``.

    A sampled crystal comes in its conventional cell, so a centred one (C, I, F, R) carries 2-4 copies of each
    atom, and every relaxation step pays for all of them. The tolerance is tight because sampled Wyckoff positions
    are exact: a loose one would merge nearly equivalent atoms and change the crystal. A collapsed cell (which
    pymatgen's Niggli reduction may not return from), a failed reduction or one that changes the composition
    keeps the cell as it is.
    """
    if unmatchable_reason(structure) is not None:
        return structure
    try:
        reduced = structure.get_primitive_structure(tolerance=tolerance)
    except Exception:  # the conventional cell is always a valid fallback
        return structure
    same = reduced.composition.reduced_composition == structure.composition.reduced_composition
    return reduced if same and len(reduced) < len(structure) else structure


def _relaxation_outcome(result: Any) -> RelaxOutcome:
    """A :class:`RelaxOutcome` from whatever a relax_fn returned for one structure."""
    if isinstance(result, Exception):
        return RelaxOutcome(None, None, f"relaxation failed: {type(result).__name__}: {result}")
    if result is None or getattr(result, "reason", None) is not None:
        return RelaxOutcome(None, None, f"relaxation failed: {getattr(result, 'reason', 'no result')}")
    structure, energy = result if isinstance(result, tuple) else (result.structure, result.energy)
    if not isinstance(structure, Structure):
        return RelaxOutcome(None, None, f"relaxation returned a {type(structure).__name__}, not a Structure")
    try:
        value = float(energy) if energy is not None and math.isfinite(float(energy)) else None
    except (TypeError, ValueError):
        value = None
    steps, converged = getattr(result, "steps", None), getattr(result, "converged", None)
    return RelaxOutcome(
        structure, value, None, None if steps is None else int(steps), None if converged is None else bool(converged)
    )
