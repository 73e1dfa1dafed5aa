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

from ..utils import lazy_exports


_EXPORTS = {
    "DeviceError": "..devices",
    "resolve_device": "..devices",
    "ReferenceHull": "..materials.hull",
    "ASEEnergyModel": "..materials.potentials",
    "CHGNetEnergyModel": "..materials.potentials",
    "EnergyModel": "..materials.potentials",
    "MACEEnergyModel": "..materials.potentials",
    "MatGLEnergyModel": "..materials.potentials",
    "MatterSimEnergyModel": "..materials.potentials",
    "ModelUnavailableError": "..materials.potentials",
    "OrbEnergyModel": "..materials.potentials",
    "SevenNetEnergyModel": "..materials.potentials",
    "load_energy_model": "..materials.potentials",
    "mp2020_corrected_energies": "..materials.potentials",
    "MatGLPropertyModel": "..materials.properties",
    "RelaxResult": "..materials.relaxation",
    "relax_structure": "..materials.relaxation",
    "CallStats": ".base",
    "CrystalReward": ".base",
    "Failure": ".base",
    "as_structure": ".base",
    "check_structure": ".base",
    "iter_rewards": ".base",
    "share_caches": ".base",
    "structure_fingerprint": ".base",
    "FigureOfMeritReward": ".combine",
    "ProductReward": ".combine",
    "StabilityReward": ".combine",
    "StableFigureOfMeritReward": ".combine",
    "ThresholdReward": ".combine",
    "WeightedSumReward": ".combine",
    "EhullReward": ".ehull",
    "EnergyScaleMismatchError": ".ehull",
    "NoveltyReward": ".novelty",
    "NoveltyVerdict": ".novelty",
    "SUNReward": ".novelty",
    "StructureArchive": ".novelty",
    "BandGapReward": ".properties",
    "DielectricReward": ".properties",
    "REWARDS": ".registry",
    "load_reward": ".registry",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
