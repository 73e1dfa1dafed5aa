"""Crystal tokenization: CrystalTokenizer, CrystalTokens, the batch collator and ``to_structure``, the package's one
"anything -> Structure" converter.

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
    TOKEN_FIELDS,
    CrystalCollator,
    CrystalTokenizer,
    CrystalTokens,
    decode_tokens,
    equivalent_representatives,
    expand_orbit,
    is_token_string,
    random_representatives,
    to_structure,
)


__all__ = [
    "TOKEN_FIELDS",
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
    "equivalent_representatives",
    "expand_orbit",
    "is_token_string",
    "model_to_physical_lattice",
    "physical_to_model_lattice",
    "random_representatives",
    "to_structure",
]
