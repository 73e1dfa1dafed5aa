"""Crystal tokenization: Wyckoff tables, CrystalTokenizer, CrystalTokens and the batch collator."""

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
    ELEMENT_SYMBOLS,
    CrystalCollator,
    CrystalTokenizer,
    CrystalTokens,
    crystal_system_lattice,
    decode_tokens,
    expand_orbit,
    lattice_mask,
    model_to_physical_lattice,
    physical_to_model_lattice,
)
from .wyckoff import WyckoffTables


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
    "lattice_mask",
    "model_to_physical_lattice",
    "physical_to_model_lattice",
]
