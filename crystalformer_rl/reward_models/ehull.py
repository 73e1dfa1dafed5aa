"""The paper's stability reward: ``-E_hull`` of each crystal, from :class:`~crystalformer_rl.materials.EhullCalculator`."""

from __future__ import annotations

from typing import Any

from ..materials.ehull import EhullCalculator, EnergyScaleMismatchError
from ..materials.hull import ReferenceHull
from ..materials.potentials import EnergyModel
from .base import CrystalReward


__all__ = ["EhullReward", "EnergyScaleMismatchError"]


class EhullReward(CrystalReward, EhullCalculator):
    """E_hull (eV/atom) of each crystal against a reference hull (:class:`EhullCalculator`); RL reward ``-E_hull``.

    ``EhullReward()`` scores with CHGNet's r2SCAN model against the shipped Materials Project hull (CHGNet 0.3.0 +
    MP2020 corrections for the systems MP keeps on the GGA scale). ``compute`` returns E_hull, the reward is its
    negative.

    Args:
        calculator, hull: the potential and the reference hull (see :class:`EhullCalculator`).
        **kwargs: the rest of :class:`EhullCalculator`'s (``fallback_calculator``, ``energy_scale``, ``device``,
            ``relax``, ``fmax``, ``max_steps``, ``ehull_range``, ...) and :class:`CrystalReward`'s
            (``failure_reward``, ``reward_clip_range``, ``cache_size``, ``min_distance``, ...).
    """

    name = "ehull"
    unit = "eV/atom"

    def __init__(
        self, calculator: EnergyModel | str | Any | None = None, hull: ReferenceHull | None = None, **kwargs: Any
    ) -> None:
        super().__init__(calculator=calculator, hull=hull, **kwargs)

    def to_reward(self, value: float) -> float:
        return -float(value)
