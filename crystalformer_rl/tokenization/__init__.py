"""Crystal tokenization: CrystalTokenizer, CrystalTokens and the batch collator.

The Wyckoff tables (`crystalformer_rl.wyckoff`) and the crystallographic rules (`crystalformer_rl.crystallography`)
are re-exported here for existing imports.
"""

from ..crystallography import (
    ELEMENT_SYMBOLS,
    crystal_system_lattice,
    model_to_physical_lattice,
    physical_to_model_lattice,
)
from ..wyckoff import WyckoffTables
from .errors import (
    CrystalTokenizationError,
    DisorderedStructureError,
    EmptyStructureError,
    InvalidStructureError,
    InvalidTokensError,
    SymmetryAnalysisError,
    TooManySitesError,
)
from .tokenization_crystalformer import (
    CrystalCollator,
    CrystalTokenizer,
    CrystalTokens,
    decode_tokens,
    expand_orbit,
)


__all__ = [
    "ELEMENT_SYMBOLS",
    "CrystalCollator",
    "CrystalTokenizationError",
    "CrystalTokenizer",
    "CrystalTokens",
    "DisorderedStructureError",
    "EmptyStructureError",
    "InvalidStructureError",
    "InvalidTokensError",
    "SymmetryAnalysisError",
    "TooManySitesError",
    "WyckoffTables",
    "crystal_system_lattice",
    "decode_tokens",
    "expand_orbit",
    "model_to_physical_lattice",
    "physical_to_model_lattice",
]
