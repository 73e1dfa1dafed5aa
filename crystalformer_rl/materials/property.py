"""A physical property of crystals computed in batches: the machinery every reward and the E_hull calculator share.

:class:`CrystalProperty` turns any inputs (structures, tokens, CIF text, ...) into checked, de-duplicated structures,
serves repeats from an LRU cache keyed by :func:`~.structures.structure_fingerprint`, computes the rest in batches
of :meth:`~CrystalProperty.batch_size`, and isolates a structure that breaks its batch. A crystal that cannot be
built or scored gets a :class:`~.structures.Failure` (its reason) instead of an exception: one pathological crystal
must never end an evaluation or a training step. Subclasses implement :meth:`~CrystalProperty._compute_batch`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymatgen.core import Structure

from ..tokenization import to_structure
from .structures import Failure, check_structure, structure_fingerprint, without_oxidation_states


logger = logging.getLogger(__name__)

__all__ = ["CallStats", "CrystalProperty"]


@dataclass
class CallStats:
    """Book-keeping of the last ``compute`` call, also pushed to TRL's ``log_metric`` when available."""

    n: int = 0
    n_cached: int = 0
    n_computed: int = 0
    n_failed: int = 0
    seconds: float = 0.0
    reasons: list[str | None] = field(default_factory=list)

    @property
    def structures_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


class CrystalProperty:
    """A physical value per crystal (E_hull in eV/atom, band gap in eV, ...), computed in cached, isolated batches.

    Args:
        cache_size: number of structure fingerprints kept (LRU). ``0`` disables caching.
        min_distance: atoms closer than this (Å) are "overlapping" and not scored.
        max_atoms: larger cells are not scored (memory/time guard).
    """

    #: short name used in logs (and by rewards in TRL metric names)
    name: str = "property"
    #: unit of the value returned by :meth:`compute`
    unit: str = ""

    def __init__(self, *, cache_size: int = 100_000, min_distance: float = 0.5, max_atoms: int = 500) -> None:
        self.cache_size = int(cache_size)
        self.min_distance = float(min_distance)
        self.max_atoms = int(max_atoms)
        self._cache: OrderedDict[str, float | Failure] = OrderedDict()
        self.last_stats = CallStats()

    def _compute_batch(self, structures: list[Structure]) -> list[float | Failure]:
        """Value for each (valid, unique, uncached) structure; may raise, the caller isolates the culprit.
        A property that must see every repeat overrides :meth:`compute_with_reasons` instead."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _compute_batch nor compute_with_reasons")

    def supported_elements(self) -> Iterable[str] | None:
        """Element symbols the model/hull can score; ``None`` = no restriction."""
        return None

    def batch_size(self) -> int:
        """How many structures :meth:`_compute_batch` gets at once."""
        return 64

    # ----------------------------------------------------------------- public API
    def compute(self, structures: Sequence[Any]) -> list[float | None]:
        """Physical value per input (``None`` if it cannot be built or scored; reasons in ``last_stats``)."""
        values = self.compute_with_reasons(structures)
        return [None if isinstance(v, Failure) else v for v in values]

    def compute_with_reasons(self, structures: Sequence[Any]) -> list[float | Failure]:
        """Like :meth:`compute` but keeps the :class:`Failure` objects."""
        t0 = time.perf_counter()
        out: list[float | Failure | None] = [None] * len(structures)
        todo: dict[str, list[int]] = {}
        todo_structs: dict[str, Structure] = {}
        n_cached = 0
        allowed = self.supported_elements()
        allowed = None if allowed is None else frozenset(allowed)
        for i, obj in enumerate(structures):
            try:
                s = to_structure(obj)
            except Exception as exc:  # a completion that cannot be built is a failure, never a crash
                out[i] = Failure(f"could not build structure: {type(exc).__name__}: {exc}")
                continue
            try:
                why = check_structure(s, min_distance=self.min_distance, max_atoms=self.max_atoms, elements=allowed)
                key = structure_fingerprint(s)
            except Exception as exc:
                out[i] = Failure(f"invalid structure: {type(exc).__name__}: {exc}")
                continue
            if why is not None:
                out[i] = Failure(why)
                continue
            s = without_oxidation_states(s)
            if key in self._cache:
                self._cache.move_to_end(key)
                out[i] = self._cache[key]
                n_cached += 1
                continue
            if key not in todo:
                todo[key] = []
                todo_structs[key] = s
            todo[key].append(i)

        keys = list(todo)
        bs = max(1, self.batch_size())
        for start in range(0, len(keys), bs):
            chunk = keys[start : start + bs]
            results = self._safe_batch([todo_structs[k] for k in chunk])
            for k, r in zip(chunk, results):
                for i in todo[k]:
                    out[i] = r
                self._remember(k, r)

        final: list[float | Failure] = [v if v is not None else Failure("not computed") for v in out]
        dt = time.perf_counter() - t0
        n_failed = sum(isinstance(v, Failure) for v in final)
        self.last_stats = CallStats(
            n=len(final),
            n_cached=n_cached,
            n_computed=len(keys),
            n_failed=n_failed,
            seconds=dt,
            reasons=[v.reason if isinstance(v, Failure) else None for v in final],
        )
        logger.info(
            "%s: %d structures (%d cached, %d computed, %d failed) in %.3f s",
            self.name,
            len(final),
            n_cached,
            len(keys),
            n_failed,
            dt,
        )
        for i, v in enumerate(final):
            if isinstance(v, Failure):
                logger.debug("%s: structure %d not scored: %s", self.name, i, v.reason)
        if n_failed:
            counts: dict[str, int] = {}
            for v in final:
                if isinstance(v, Failure):
                    counts[v.reason] = counts.get(v.reason, 0) + 1
            summary = "; ".join(f"{c}x {r}" for r, c in sorted(counts.items(), key=lambda t: -t[1])[:5])
            logger.warning("%s: %d/%d structures not scored: %s", self.name, n_failed, len(final), summary)
        return final

    def value_key(self) -> tuple | None:
        """What decides :meth:`_compute_batch`'s values; rewards with equal keys may share one cache
        (:func:`share_caches`). ``None`` (the default): this reward shares with none."""
        return None

    def share_with(self, other: CrystalProperty) -> None:
        """Serve this reward's values from ``other``'s cache (both must have the same :meth:`value_key`)."""
        if self.value_key() is None or self.value_key() != other.value_key():
            raise ValueError(f"{self!r} and {other!r} compute different values: they cannot share a cache")
        self._cache = other._cache

    # ----------------------------------------------------------------- helpers
    def clear_cache(self) -> None:
        self._cache.clear()

    def _remember(self, key: str, value: float | Failure) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = value
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _safe_batch(self, structures: list[Structure]) -> list[float | Failure]:
        """Run a batch; if it raises, rerun one by one so one culprit cannot sink its neighbours."""
        try:
            results = list(self._compute_batch(structures))
            if len(results) != len(structures):
                raise RuntimeError(f"{len(results)} results for {len(structures)} structures")
        except Exception as exc:
            if len(structures) == 1:
                return [Failure(f"{self.name} model error: {type(exc).__name__}: {exc}")]
            logger.info("%s: batch of %d failed (%s); retrying one by one", self.name, len(structures), exc)
            results = []
            for s in structures:
                results.extend(self._safe_batch([s]))
            return results
        return [_finite_or_failure(r) for r in results]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _finite_or_failure(value: float | Failure | None) -> float | Failure:
    if isinstance(value, Failure):
        return value
    if value is None:
        return Failure("model returned no value")
    try:
        v = float(value)
    except (TypeError, ValueError):
        return Failure(f"model returned a non-number ({type(value).__name__})")
    if not math.isfinite(v):
        return Failure(f"non-finite value ({v})")
    return v
