"""The physics under the rewards and the evaluation: potentials, relaxation, hulls, matching, validity, properties.

Nothing here knows TRL, a reward or a metric table; ``reward_models`` (TRL callables) and ``evaluation``
(aggregation and tables) both stand on this package, and the trainers use it directly.

* :mod:`.potentials`: :class:`EnergyModel` and every backend (CHGNet, matgl, SevenNet, Orb, MACE, MatterSim, any
  ASE calculator), their energy scales and devices, MP2020 corrections;
* :mod:`.relaxation`: the one FIRE + FrechetCellFilter path, batched in lockstep (:func:`relax_structures`);
* :mod:`.hull`, :mod:`.ehull`: reference hulls and :class:`EhullCalculator` (E_hull, one path for rewards and
  evaluation);
* :mod:`.matching`, :mod:`.archive`: ``StructureMatcher`` uniqueness and novelty, reference indexes, the archive of
  produced structures;
* :mod:`.structures`, :mod:`.validity`: why a structure cannot be scored, fingerprints, CDVAE validity;
* :mod:`.property`: :class:`CrystalProperty`, the cached, batched, failure-isolating base of every computed value;
* :mod:`.properties`: band gap (MEGNet) and the dielectric ensemble;
* :mod:`.io`: crystals from files and tables.
"""

from .archive import StructureArchive
from .ehull import EhullCalculator, EnergyScaleMismatchError, compute_ehull, default_ehull_fn, default_relax_fn
from .hull import ReferenceHull
from .io import LoadedCrystals, load_crystals
from .matching import ReferenceIndex, deduplicate, novelty, novelty_checks, reduced_formula, space_group_number
from .potentials import (
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
from .property import CallStats, CrystalProperty
from .relaxation import RelaxResult, primitive_cell, relax_in_lockstep, relax_structure, relax_structures
from .structures import Failure, check_structure, structure_fingerprint
from .validity import check_composition_validity, check_structure_validity, composition_validity, structure_validity


__all__ = [
    "ASEEnergyModel",
    "CHGNetEnergyModel",
    "CallStats",
    "CrystalProperty",
    "EhullCalculator",
    "EnergyModel",
    "EnergyScaleMismatchError",
    "Failure",
    "LoadedCrystals",
    "MACEEnergyModel",
    "MatGLEnergyModel",
    "MatterSimEnergyModel",
    "ModelUnavailableError",
    "OrbEnergyModel",
    "ReferenceHull",
    "ReferenceIndex",
    "RelaxResult",
    "SevenNetEnergyModel",
    "StructureArchive",
    "check_composition_validity",
    "check_structure",
    "check_structure_validity",
    "composition_validity",
    "compute_ehull",
    "deduplicate",
    "default_ehull_fn",
    "default_relax_fn",
    "load_crystals",
    "load_energy_model",
    "mp2020_corrected_energies",
    "novelty",
    "novelty_checks",
    "primitive_cell",
    "reduced_formula",
    "relax_in_lockstep",
    "relax_structure",
    "relax_structures",
    "space_group_number",
    "structure_fingerprint",
    "structure_validity",
]
