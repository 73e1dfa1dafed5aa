"""Energy above hull of samples, unrelaxed and after MLIP relaxation, through the project's reward models.

The evaluation never talks to an MLIP directly: it takes two callables,

* ``ehull_fn(structures) -> list[float | None]`` (E_hull in eV/atom, ``None`` when a structure cannot be scored),
* ``relax_fn(structures) -> list[tuple[Structure, float] | None]`` (relaxed structure and its total energy),

which default to :class:`crystalformer_rl.reward_models.EhullReward` and its energy model. Tests inject cheap
fakes; a run can inject any model. Every failure is kept as a reason string, never raised.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pymatgen.core import Structure
from tqdm.auto import tqdm

from ..reward_models.energy import RelaxResult
from .matching import unmatchable_reason


logger = logging.getLogger(__name__)

__all__ = [
    "EhullFn",
    "RelaxFn",
    "compute_ehull",
    "default_ehull_fn",
    "default_relax_fn",
    "primitive_cell",
    "relax_structures",
]

EhullFn = Callable[[list[Structure]], Sequence[Any]]
RelaxFn = Callable[[list[Structure]], Sequence[Any]]


def _ehull_reward_class() -> type:
    from ..reward_models import EhullReward

    return EhullReward


def _default_reward(**kwargs: Any):
    return _ehull_reward_class()(**kwargs)


def default_ehull_fn(reward: Any | None = None, **kwargs: Any) -> EhullFn:
    """E_hull through ``EhullReward`` (``EhullReward(**kwargs)`` unless ``reward`` is given), keeping its reasons.

    The reward is built here, so a model or hull that cannot load fails once, now, instead of once per structure.
    """
    reward = reward if reward is not None else _default_reward(**kwargs)

    def ehull_fn(structures: list[Structure]) -> list[Any]:
        if hasattr(reward, "compute_with_reasons"):
            return list(reward.compute_with_reasons(structures))
        return list(reward.compute(structures))

    ehull_fn.reward = reward  # type: ignore[attr-defined]  # lets default_relax_fn reuse the loaded model
    return ehull_fn


def _energy_model_of(reward: Any) -> Any:
    for name in ("calculator", "energy_model", "model", "potential"):
        model = getattr(reward, name, None)
        if model is not None and callable(getattr(model, "relax", None)):
            return model
    return None


def default_relax_fn(
    fmax: float = 0.1, steps: int = 500, ehull_fn: EhullFn | None = None, reward: Any | None = None
) -> RelaxFn:
    """Relax with the energy model of ``EhullReward`` (FIRE + FrechetCellFilter), so relaxed E_hull is consistent.

    The reward is ``reward``, else the one behind ``ehull_fn`` (from :func:`default_ehull_fn`), else a new
    ``EhullReward()``. When it exposes no model, CHGNet's ``StructOptimizer`` (same optimizer and filter) is used.
    The returned function is batched (``relax_fn.batched``): models with ``relax_many`` relax a whole list in
    lockstep, one batched force call per step; it takes ``on_done(index)`` for progress.
    """
    reward = reward if reward is not None else getattr(ehull_fn, "reward", None)
    model = _energy_model_of(reward if reward is not None else _default_reward()) or _CHGNetRelaxer()

    def relax_fn(structures: list[Structure], on_done: Callable[[int], None] | None = None) -> list[Any]:
        if callable(getattr(model, "relax_many", None)):
            results = model.relax_many(structures, fmax=fmax, steps=steps, on_done=on_done)
            return [r if not isinstance(r, RelaxResult) else (r.structure, float(r.energy)) for r in results]
        out = []
        for i, s in enumerate(structures):
            try:
                result = model.relax(s, fmax=fmax, steps=steps)
                out.append(result if isinstance(result, tuple) else (result.structure, float(result.energy)))
            except Exception as exc:
                out.append(exc)
            if on_done is not None:
                on_done(i)
        return out

    relax_fn.batched = True  # type: ignore[attr-defined]
    return relax_fn


class _CHGNetRelaxer:
    """Fallback relaxer when the reward model exposes none: CHGNet 0.3.0 via its own ``StructOptimizer``."""

    def __init__(self) -> None:
        from chgnet.model import StructOptimizer

        with contextlib.redirect_stdout(sys.stderr):  # CHGNet's load messages
            self._opt = StructOptimizer(optimizer_class="FIRE", use_device="cpu")

    def relax(self, structure: Structure, fmax: float = 0.1, steps: int = 500) -> tuple[Structure, float]:
        result = self._opt.relax(structure, fmax=fmax, steps=steps, ase_filter="FrechetCellFilter", verbose=False)
        energy = float(result["trajectory"].energies[-1])
        return result["final_structure"], energy


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


def relax_structures(
    structures: Sequence[Structure | None],
    relax_fn: RelaxFn | None = None,
    fmax: float = 0.1,
    steps: int = 500,
    progress: bool = True,
    chunk_size: int = 64,
    primitive: bool = False,
) -> tuple[list[Structure | None], list[float | None], list[str | None]]:
    """Relaxed structure, its total energy (eV) and the failure reason, per input.

    A batched ``relax_fn`` (the default, see :func:`default_relax_fn`) gets ``chunk_size`` structures at a time
    and reports each as it finishes; any other ``relax_fn`` gets one structure at a time, so that a relaxation
    that blows up costs only its own row. Either way a failure is that row's reason, never the run's. A collapsed
    cell (:func:`~crystalformer_rl.evaluation.matching.unmatchable_reason`) is not relaxed: its neighbour list
    would span millions of periodic images. ``primitive`` relaxes each crystal's primitive cell
    (:func:`primitive_cell`), as the reference's ``mlff_relax.py`` can; the energy is then that of the primitive
    cell (the same per atom).
    """
    relax_fn = relax_fn or default_relax_fn(fmax=fmax, steps=steps)
    relaxed: list[Structure | None] = [None] * len(structures)
    energies: list[float | None] = [None] * len(structures)
    reasons: list[str | None] = [None] * len(structures)
    for i, s in enumerate(structures):
        if s is None:
            reasons[i] = "no structure"
        elif (why := unmatchable_reason(s)) is not None:  # a collapsed cell would hang CHGNet's neighbour search
            reasons[i] = f"not relaxed: {why}"
    todo = [i for i, s in enumerate(structures) if s is not None and reasons[i] is None]
    if primitive:
        structures = [s if s is None else primitive_cell(s) for s in structures]
    batched = getattr(relax_fn, "batched", False)
    size = max(1, chunk_size) if batched else 1
    bar = tqdm(total=len(todo), desc="relaxing", unit="crystal", disable=not progress)
    try:
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            try:
                if batched:
                    results = list(relax_fn([structures[i] for i in chunk], on_done=lambda _: bar.update(1)))
                else:
                    results = list(relax_fn([structures[i] for i in chunk]))
                    bar.update(len(chunk))
                if len(results) != len(chunk):
                    raise RuntimeError(f"{len(results)} results for {len(chunk)} structures")
            except Exception as exc:
                results = [exc] * len(chunk)
            for i, result in zip(chunk, results):
                relaxed[i], energies[i], reasons[i] = _relaxation_outcome(result)
    finally:
        bar.close()
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


def _relaxation_outcome(result: Any) -> tuple[Structure | None, float | None, str | None]:
    """(structure, energy, reason) from whatever a relax_fn returned for one structure."""
    if isinstance(result, Exception):
        return None, None, f"relaxation failed: {type(result).__name__}: {result}"
    if result is None or getattr(result, "reason", None) is not None:
        return None, None, f"relaxation failed: {getattr(result, 'reason', 'no result')}"
    structure, energy = result if isinstance(result, tuple) else (result.structure, result.energy)
    if not isinstance(structure, Structure):
        return None, None, f"relaxation returned a {type(structure).__name__}, not a Structure"
    try:
        value = float(energy) if energy is not None and math.isfinite(float(energy)) else None
    except (TypeError, ValueError):
        value = None
    return structure, value, None
