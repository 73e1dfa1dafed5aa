"""Wyckoff-position tables for the 230 space groups, built once from pyxtal's database.

The reference keeps a dense (230, 28, 576, 3, 4) table of symmetry operations (178 MB). We keep what the
model and the tokenizer actually use:

* per (G, W): multiplicity, ``dof0`` (fully fixed position), ``fc_mask`` (which of x, y, z is not a
  constant), and ``op0`` (the representative affine operation, the first triplet of the position);
* the full orbit operations of every position in one ragged array (14,433 ops), for building structures.

Indexing follows the reference: ``[G - 1, W]`` with ``W = 0`` reserved for padding and letter ``a`` = 1
(``A`` = 27, only in Pmmm; see `crystallography.LETTERS`). Rows for ``W = 0`` and ``W > wmax`` are zero, with
``dof0 = True`` as in the reference. The tables ship inside the package as a small ``.npz`` beside this module
(exact rationals, stored over 24) and are checked against pyxtal by the tests; a model folder's remote code
carries them as a generated module, ``wyckoff_tables_npz.py`` (see ``modeling_crystalformer/hub_crystalformer.py``).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .crystallography import NUM_SPACE_GROUPS, TRANSLATION_DENOMINATOR, WYCK_TYPES, index_to_letter


TABLES_PATH = Path(__file__).with_name("wyckoff_tables.npz")


def _tables_file() -> Path | io.BytesIO | None:
    """The tables' ``.npz``: the file beside this module, else (in a model folder's remote code, which holds only
    ``.py`` files) the module ``wyckoff_tables_npz`` that ``save_pretrained`` generates from that file; ``None``
    if neither is there."""
    if TABLES_PATH.exists():
        return TABLES_PATH
    try:
        from .wyckoff_tables_npz import NPZ_BASE64
    except ImportError:
        return None
    return io.BytesIO(base64.b64decode(NPZ_BASE64))


@dataclass(frozen=True)
class WyckoffTables:
    mult: np.ndarray  # (230, 28) int: multiplicity of (G, W)
    wmax: np.ndarray  # (230,) int: number of Wyckoff positions (= index of the general position)
    dof0: np.ndarray  # (230, 28) bool: op0 has a rank-0 rotation (no free coordinate)
    fc_mask: np.ndarray  # (230, 28, 3) bool: row i of op0's rotation is non-zero
    op0: np.ndarray  # (230, 28, 3, 4) float64: representative affine op of each position
    orbit_ops: np.ndarray  # (sum of multiplicities, 3, 4) float64: all ops, position by position
    orbit_start: np.ndarray  # (230, 28) int: first row of (G, W) in ``orbit_ops``

    def orbit(self, g: int, w: int) -> np.ndarray:
        """The ``mult`` affine ops (m, 3, 4) of Wyckoff position ``w`` of space group ``g``."""
        start = self.orbit_start[g - 1, w]
        return self.orbit_ops[start : start + self.mult[g - 1, w]]

    def general_ops(self, g: int) -> np.ndarray:
        return self.orbit(g, int(self.wmax[g - 1]))

    def symbol(self, g: int, w: int) -> str:
        """Wyckoff symbol such as '4a'."""
        return f"{self.mult[g - 1, w]}{index_to_letter(w)}"

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls) -> WyckoffTables:
        """The tables shipped with the package (build them with :meth:`from_pyxtal` if missing)."""
        source = _tables_file()
        if source is None:
            tables = cls.from_pyxtal()
            tables.save(TABLES_PATH)
            return tables
        with np.load(source) as f:
            orbit_ops = f["orbit_ops_x24"].astype(np.float64) / TRANSLATION_DENOMINATOR
            orbit_start = f["orbit_start"].astype(np.int64)
            mult = f["mult"].astype(np.int64)
        return cls._from_orbits(mult, orbit_ops, orbit_start)

    def save(self, path: str | Path) -> None:
        scaled = np.rint(self.orbit_ops * TRANSLATION_DENOMINATOR)
        if not np.allclose(scaled / TRANSLATION_DENOMINATOR, self.orbit_ops, atol=1e-12):
            raise ValueError("an operation is not a multiple of 1/24; cannot store it exactly")
        np.savez_compressed(
            path,
            orbit_ops_x24=scaled.astype(np.int8),
            orbit_start=self.orbit_start.astype(np.int32),
            mult=self.mult.astype(np.int16),
        )

    @classmethod
    def from_pyxtal(cls) -> WyckoffTables:
        """Build from pyxtal's Wyckoff database (general position first, letter 'a' last, op0 first)."""
        try:  # (in a `try`, so that transformers does not ask a model folder's remote code for pyxtal)
            from pyxtal.symmetry import Group
        except ImportError as exc:
            raise ImportError(f"{TABLES_PATH.name} is missing and building it needs pyxtal: {exc}") from exc

        mult = np.zeros((NUM_SPACE_GROUPS, WYCK_TYPES), dtype=np.int64)
        orbit_start = np.zeros((NUM_SPACE_GROUPS, WYCK_TYPES), dtype=np.int64)
        ops = []
        n = 0
        for g in range(1, NUM_SPACE_GROUPS + 1):
            positions = Group(g).Wyckoff_positions
            for i, wp in enumerate(reversed(positions)):  # letter a first
                w = i + 1
                assert index_to_letter(w) == wp.letter, (g, w, wp.letter)
                matrices = np.stack([op.affine_matrix[:3, :] for op in wp.ops])
                mult[g - 1, w] = len(matrices)
                orbit_start[g - 1, w] = n
                ops.append(matrices)
                n += len(matrices)
        return cls._from_orbits(mult, np.concatenate(ops), orbit_start)

    @classmethod
    def _from_orbits(cls, mult: np.ndarray, orbit_ops: np.ndarray, orbit_start: np.ndarray) -> WyckoffTables:
        wmax = (mult > 0).sum(axis=1)
        op0 = np.zeros((NUM_SPACE_GROUPS, WYCK_TYPES, 3, 4))
        present = mult > 0
        op0[present] = orbit_ops[orbit_start[present]]
        rotation = op0[..., :3]
        fc_mask = np.any(rotation != 0, axis=-1) & present[..., None]
        dof0 = ~fc_mask.any(axis=-1)  # True for padding and absent letters too, as in the reference
        for array in (mult, wmax, dof0, fc_mask, op0, orbit_ops, orbit_start):
            array.setflags(write=False)
        return cls(mult, wmax, dof0, fc_mask, op0, orbit_ops, orbit_start)


def apply_op(op: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Apply affine op(s) (..., 3, 4) to fractional coordinates (..., 3)."""
    return np.einsum("...ij,...j->...i", op[..., :3], xyz) + op[..., 3]


__all__ = ["TABLES_PATH", "WyckoffTables", "apply_op"]
