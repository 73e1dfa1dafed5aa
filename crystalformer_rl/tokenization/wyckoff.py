"""The former home of the Wyckoff tables, now `crystalformer_rl.wyckoff` (beside `crystalformer_rl.crystallography`,
which holds the letters and constants); kept so that `crystalformer_rl.tokenization.wyckoff` imports still work."""

from ..crystallography import LETTERS, NUM_SPACE_GROUPS, WYCK_TYPES, index_to_letter, letter_to_index
from ..wyckoff import TABLES_PATH, WyckoffTables, apply_op


__all__ = [
    "LETTERS",
    "NUM_SPACE_GROUPS",
    "TABLES_PATH",
    "WYCK_TYPES",
    "WyckoffTables",
    "apply_op",
    "index_to_letter",
    "letter_to_index",
]
