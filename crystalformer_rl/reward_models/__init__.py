"""Reward models for crystal RL: TRL reward callables, thin layers over the physics of :mod:`crystalformer_rl.materials`.

Every reward is a :class:`CrystalReward`: ``reward(prompts, completions, completion_ids, **kwargs)`` follows
TRL's reward-function protocol (one float or ``None`` per completion) and ``reward.compute(structures)`` returns
the physical quantity (E_hull in eV/atom, band gap in eV, ε∞, ...). Heavy dependencies (chgnet, matgl, sevenn,
...) are imported lazily, when a model is built. Every model takes ``device`` (default ``"auto"``: the rank's CUDA
device when there is one, else the CPU; :func:`resolve_device`), so each rank scores its own samples.

Example::

    from crystalformer_rl.reward_models import EhullReward, FigureOfMeritReward
    ehull = EhullReward()                      # CHGNet r2SCAN vs the shipped MP hull, reward = -E_hull
    ehull.compute([structure])                 # [0.03]  (eV/atom)
    trainer = RLOOTrainer(..., reward_funcs=[ehull, FigureOfMeritReward()])
    sun = SUNReward(penalty=1.0)               # -E_hull, minus 1 for a training-corpus crystal or a repeat
"""

from ..devices import DeviceError, resolve_device
from ..materials.hull import ReferenceHull
from ..materials.potentials import (
    ASEEnergyModel,
    CHGNetEnergyModel,
    EnergyModel,
    MACEEnergyModel,
    MatGLEnergyModel,
    MatterSimEnergyModel,
    ModelUnavailableError,
    OrbEnergyModel,
    SevenNetEnergyModel,
    load_energy_model,
    mp2020_corrected_energies,
)
from ..materials.properties import MatGLPropertyModel
from ..materials.relaxation import RelaxResult, relax_structure
from .base import (
    CallStats,
    CrystalReward,
    Failure,
    as_structure,
    check_structure,
    iter_rewards,
    share_caches,
    structure_fingerprint,
)
from .combine import (
    FigureOfMeritReward,
    ProductReward,
    StabilityReward,
    StableFigureOfMeritReward,
    ThresholdReward,
    WeightedSumReward,
)
from .ehull import EhullReward, EnergyScaleMismatchError
from .novelty import NoveltyReward, NoveltyVerdict, StructureArchive, SUNReward
from .properties import BandGapReward, DielectricReward


__all__ = [
    "ASEEnergyModel",
    "BandGapReward",
    "CHGNetEnergyModel",
    "CallStats",
    "CrystalReward",
    "DeviceError",
    "DielectricReward",
    "EhullReward",
    "EnergyModel",
    "EnergyScaleMismatchError",
    "Failure",
    "FigureOfMeritReward",
    "MACEEnergyModel",
    "MatGLEnergyModel",
    "MatGLPropertyModel",
    "MatterSimEnergyModel",
    "ModelUnavailableError",
    "NoveltyReward",
    "NoveltyVerdict",
    "OrbEnergyModel",
    "ProductReward",
    "ReferenceHull",
    "RelaxResult",
    "SUNReward",
    "SevenNetEnergyModel",
    "StabilityReward",
    "StableFigureOfMeritReward",
    "StructureArchive",
    "ThresholdReward",
    "WeightedSumReward",
    "as_structure",
    "check_structure",
    "iter_rewards",
    "load_energy_model",
    "mp2020_corrected_energies",
    "relax_structure",
    "resolve_device",
    "share_caches",
    "structure_fingerprint",
]
