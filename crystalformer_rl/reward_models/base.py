"""Common machinery for crystal rewards: structure coercion, validation, caching, timing and the TRL protocol.

Every reward in this package is a :class:`CrystalReward`. It is

* a TRL reward callable, ``reward(prompts, completions, completion_ids, **kwargs) -> list[float | None]``, so it
  can be passed to ``RLOOTrainer``/``GRPOTrainer`` as a ``reward_funcs`` entry, and
* a plain property predictor, ``reward.compute(structures) -> list[float | None]``, returning the physical
  quantity (E_hull in eV/atom, band gap in eV, ...).

A crystal that cannot be built or scored gives ``None`` with a logged reason (TRL drops ``None`` from the
baseline and gives the row zero advantage) instead of raising: an RL step must never die because the policy
sampled one pathological crystal.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure

from ..tokenization import to_structure


# Completions become structures through the package's one converter (Structure, CrystalTokens, {"structure": ...},
# pymatgen dict / JSON, token string, CIF text or path, ASE Atoms). CrystalTokens hand out their cached structure:
# every reward sees the same object and must copy it before changing it.
as_structure = to_structure


logger = logging.getLogger(__name__)

__all__ = [
    "CallStats",
    "CrystalReward",
    "Failure",
    "as_structure",
    "check_structure",
    "structure_fingerprint",
]


@dataclass(frozen=True)
class Failure:
    """Why a crystal got no score; kept instead of raising so one bad sample cannot end a training step."""

    reason: str

    def __str__(self) -> str:
        return self.reason


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


class CrystalReward(ABC):
    """Base class of all crystal rewards: a TRL reward callable with a physical ``compute``.

    Subclasses implement :meth:`_compute_batch` on unique, validated, uncached structures and may override
    :meth:`to_reward` (the map from physical value to reward, e.g. ``-E_hull``).

    Args:
        cache_size: number of structure fingerprints kept (LRU). ``0`` disables caching.
        failure_reward: value TRL receives instead of ``None`` for unscorable crystals. ``None`` (default) follows
            TRL's protocol (the row drops out of the baseline); a number penalises failures like the reference
            code's clipped worst value.
        min_distance: atoms closer than this (Å) are "overlapping" and not scored.
        max_atoms: larger cells are not scored (memory/time guard).
        reward_clip_range: clip this reward to ``(min, max)`` before TRL combines it with others (the trainer's
            ``reward_clip_range`` clips the weighted total). A floor on one term of a sum, e.g. ``(-1, 0)`` on E_hull
            gives no credit below the hull, where an MLIP's errors would otherwise be rewarded. ``failure_reward``
            is not clipped.
    """

    #: short name used in logs and TRL metric names
    name: str = "reward"
    #: unit of the physical value returned by :meth:`compute`
    unit: str = ""

    def __init__(
        self,
        *,
        cache_size: int = 100_000,
        failure_reward: float | None = None,
        min_distance: float = 0.5,
        max_atoms: int = 500,
        reward_clip_range: tuple[float, float] | None = None,
    ) -> None:
        if reward_clip_range is not None:
            low, high = (float(v) for v in reward_clip_range)
            if not low <= high:
                raise ValueError(f"{self.name}: reward_clip_range {tuple(reward_clip_range)} has min > max")
            reward_clip_range = (low, high)
        self.reward_clip_range = reward_clip_range
        self.cache_size = int(cache_size)
        self.failure_reward = failure_reward
        self.min_distance = float(min_distance)
        self.max_atoms = int(max_atoms)
        self._cache: OrderedDict[str, float | Failure] = OrderedDict()
        self.last_stats = CallStats()
        # TRL uses ``__name__`` of reward functions for its logs.
        self.__name__ = self.name

    # ----------------------------------------------------------------- to implement
    @abstractmethod
    def _compute_batch(self, structures: list[Structure]) -> list[float | Failure]:
        """Physical value for each (valid, unique) structure; may raise, the caller isolates the culprit."""

    def supported_elements(self) -> Iterable[str] | None:
        """Element symbols the model/hull can score; ``None`` = no restriction."""
        return None

    def to_reward(self, value: float) -> float:
        """Map the physical value to the quantity RL maximises."""
        return float(value)

    def reward_of(self, value: float) -> float | None:
        """The reward this callable gives TRL for a scored value: :meth:`to_reward`, clipped to
        ``reward_clip_range``; ``failure_reward`` when it is not finite. Rewards that combine others (S.U.N.-aware,
        weighted sums) use it too, so a child's clip holds inside them."""
        r = float(self.to_reward(value))
        if not math.isfinite(r):
            return self.failure_reward
        if self.reward_clip_range is not None:
            r = min(max(r, self.reward_clip_range[0]), self.reward_clip_range[1])
        return r

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
                s = as_structure(obj)
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
            if any(not isinstance(sp, Element) for sp in s.species):
                s = s.copy()
                s.remove_oxidation_states()
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

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        completion_ids: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """TRL reward protocol: one reward per completion, ``None`` (or ``failure_reward``) if unscorable."""
        if completions is None:
            completions = kwargs.pop("structures", None)
        if completions is None:
            raise TypeError(f"{self.name}: no completions given")
        values = self.compute_with_reasons(list(completions))
        rewards: list[float | None] = []
        for v in values:
            if isinstance(v, Failure):
                rewards.append(self.failure_reward)
                continue
            try:
                r = self.reward_of(v)
            except Exception as exc:  # a combination can fail on one value; never on the whole batch
                logger.warning("%s: reward transform failed: %s", self.name, exc)
                r = None
            rewards.append(r)
        self._log_to_trainer(values, kwargs)
        return rewards

    def value_key(self) -> tuple | None:
        """What decides :meth:`_compute_batch`'s values; rewards with equal keys may share one cache
        (:func:`share_caches`). ``None`` (the default): this reward shares with none."""
        return None

    def share_with(self, other: CrystalReward) -> None:
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

    def _log_to_trainer(self, values: list[float | Failure], kwargs: dict[str, Any]) -> None:
        """Push timing and failure rate to TRL's ``log_metric`` (same keys on every rank)."""
        log_metric: Callable[[str, float], Any] | None = kwargs.get("log_metric")
        if log_metric is None:
            return
        try:
            stats = self.last_stats
            log_metric(f"{self.name}/seconds", float(stats.seconds))
            log_metric(f"{self.name}/failed_fraction", float(stats.n_failed / max(stats.n, 1)))
            log_metric(f"{self.name}/cached_fraction", float(stats.n_cached / max(stats.n, 1)))
        except Exception as exc:  # logging must never break a step
            logger.debug("log_metric failed: %s", exc)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def iter_rewards(rewards: Any) -> Iterator[CrystalReward]:
    """Every :class:`CrystalReward` in ``rewards`` and inside them (the children of combinations), once each."""
    seen: set[int] = set()
    stack = list(rewards) if isinstance(rewards, (list, tuple)) else [rewards]
    while stack:
        obj = stack.pop(0)
        if isinstance(obj, (list, tuple)):
            stack[:0] = list(obj)
        elif isinstance(obj, CrystalReward) and id(obj) not in seen:
            seen.add(id(obj))
            yield obj
            stack[:0] = list(vars(obj).values())


def share_caches(rewards: Any) -> list[tuple[CrystalReward, CrystalReward]]:
    """Let rewards that compute the same values (equal :meth:`~CrystalReward.value_key`) share one cache.

    Why: a stability-gated figure of merit next to an E_hull term holds two :class:`EhullReward` that would each run
    the potential on every crystal. Caches hold physical values, before ``to_reward``, clipping and
    ``failure_reward``, so rewards that differ only there share safely. Returns the ``(reward, shared with)`` pairs.
    """
    first: dict[tuple, CrystalReward] = {}
    pairs = []
    for reward in iter_rewards(rewards):
        key = reward.value_key()
        if key is None or reward.cache_size <= 0:
            continue
        if key in first:
            reward.share_with(first[key])
            pairs.append((reward, first[key]))
        else:
            first[key] = reward
    return pairs


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
