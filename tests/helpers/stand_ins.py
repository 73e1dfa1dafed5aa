"""Small stand-ins shared by the reward tests."""

from __future__ import annotations

from pymatgen.core import Structure


class Tokens:
    """Stand-in for the tokenizer's CrystalTokens: anything with to_structure()."""

    def __init__(self, structure: Structure | None) -> None:
        self.structure = structure

    def to_structure(self) -> Structure:
        if self.structure is None:
            raise ValueError("invalid Wyckoff combination")
        return self.structure
