"""The rewards a config names: ``REWARDS`` (name -> import path) and :func:`load_reward`.

A name that is not registered may be an import path ``package.module:callable_or_factory``, so a user's own reward
works in a YAML config without registering it here.
"""

from __future__ import annotations

import importlib


__all__ = ["REWARDS", "load_reward"]

REWARDS = {
    "ehull": "crystalformer_rl.reward_models:EhullReward",
    "stability": "crystalformer_rl.reward_models:StabilityReward",
    "band_gap": "crystalformer_rl.reward_models:BandGapReward",
    "dielectric": "crystalformer_rl.reward_models:DielectricReward",
    "figure_of_merit": "crystalformer_rl.reward_models:FigureOfMeritReward",
    "stable_figure_of_merit": "crystalformer_rl.reward_models:StableFigureOfMeritReward",
    "ehull_sun": "crystalformer_rl.reward_models:SUNReward",
}


def load_reward(name: str, **kwargs):
    """A reward callable by registry name or import path; classes and factories are called with ``kwargs``."""
    target = REWARDS.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown reward {name!r}: use one of {sorted(REWARDS)} or 'package.module:callable'")
    module, attr = target.split(":", 1)
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, type) or kwargs:
        obj = obj(**kwargs)
    return obj
