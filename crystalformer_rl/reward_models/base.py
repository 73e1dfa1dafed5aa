"""The base of every reward: a materials property (:class:`~crystalformer_rl.materials.CrystalProperty`) that is
also a TRL reward callable.

A :class:`CrystalReward` is

* a TRL reward callable, ``reward(prompts, completions, completion_ids, **kwargs) -> list[float | None]``, so it
  can be passed to ``RLOOTrainer``/``GRPOTrainer`` as a ``reward_funcs`` entry, and
* a plain property predictor, ``reward.compute(structures) -> list[float | None]``, returning the physical
  quantity (E_hull in eV/atom, band gap in eV, ...).

A crystal that cannot be built or scored gives ``None`` with a logged reason (TRL drops ``None`` from the
baseline and gives the row zero advantage) instead of raising: an RL step must never die because the policy
sampled one pathological crystal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..materials.property import CallStats, CrystalProperty
from ..materials.structures import Failure, check_structure, structure_fingerprint
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
    "iter_rewards",
    "share_caches",
    "structure_fingerprint",
]


class CrystalReward(CrystalProperty):
    """Base class of all crystal rewards: a TRL reward callable over a physical :meth:`compute`.

    Subclasses implement :meth:`_compute_batch` on unique, validated, uncached structures (or
    :meth:`compute_with_reasons` when every repeat matters) and may override :meth:`to_reward` (the map from
    physical value to reward, e.g. ``-E_hull``).

    Args:
        failure_reward: value TRL receives instead of ``None`` for unscorable crystals. ``None`` (default) follows
            TRL's protocol (the row drops out of the baseline); a number penalises failures like the reference
            code's clipped worst value.
        reward_clip_range: clip this reward to ``(min, max)`` before TRL combines it with others (the trainer's
            ``reward_clip_range`` clips the weighted total). A floor on one term of a sum, e.g. ``(-1, 0)`` on E_hull
            gives no credit below the hull, where an MLIP's errors would otherwise be rewarded. ``failure_reward``
            is not clipped.
        **kwargs: ``cache_size``, ``min_distance``, ``max_atoms`` of :class:`CrystalProperty`.
    """

    #: short name used in logs and TRL metric names
    name: str = "reward"

    def __init__(
        self,
        *,
        failure_reward: float | None = None,
        reward_clip_range: tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if reward_clip_range is not None:
            low, high = (float(v) for v in reward_clip_range)
            if not low <= high:
                raise ValueError(f"{self.name}: reward_clip_range {tuple(reward_clip_range)} has min > max")
            reward_clip_range = (low, high)
        self.reward_clip_range = reward_clip_range
        self.failure_reward = failure_reward
        # TRL uses ``__name__`` of reward functions for its logs.
        self.__name__ = self.name

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
    """Let rewards that compute the same values (equal :meth:`~CrystalProperty.value_key`) share one cache.

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
