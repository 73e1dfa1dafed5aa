"""The crystallography every layer shares: space groups, Wyckoff letters, element symbols, the crystal systems'
lattice rules and the model-space lattice. Each rule is written here once.

The tokenizer, the model and the sampler (and any other layer needing these rules) import this module. It
imports nothing of the package, and neither torch nor pymatgen (the element symbols are written here). The lattice functions take numpy arrays or torch tensors and apply the same
tables with numpy or torch indexing. The Wyckoff positions themselves are in :mod:`crystalformer_rl.wyckoff`,
with ``wyckoff_tables.npz`` beside it.
"""

from __future__ import annotations

import math
import string
import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


# ---------------------------------------------------------------------------------------------------------
# Space groups, Wyckoff letters, token layout
# ---------------------------------------------------------------------------------------------------------

NUM_SPACE_GROUPS = 230
SPACE_GROUPS = range(1, NUM_SPACE_GROUPS + 1)  # 1..230
WYCK_TYPES = 28  # 0 = padding, 1..26 = a..z, 27 = A (only in Pmmm)
LETTERS = "-" + string.ascii_lowercase + "A"  # index -> letter; index 0 is the padding symbol
TRANSLATION_DENOMINATOR = 24  # every translation in the International Tables is a multiple of 1/24
TOKENS_PER_SITE = 5  # W, A, X, Y, Z
DEFAULT_N_MAX = 21  # sites per crystal in the published models: up to 20 Wyckoff sites + the lattice read-out site


def letter_to_index(letter: str) -> int:
    """'a' -> 1, ..., 'z' -> 26, 'A' -> 27."""
    if len(letter) != 1 or letter not in LETTERS[1:]:
        raise ValueError(f"{letter!r} is not a Wyckoff letter (a..z, A)")
    return LETTERS.index(letter)


def index_to_letter(index: int) -> str:
    """1 -> 'a', ..., 26 -> 'z', 27 -> 'A'."""
    if not 1 <= index < WYCK_TYPES:
        raise ValueError(f"{index} is not a Wyckoff index (1..{WYCK_TYPES - 1})")
    return LETTERS[index]


# ---------------------------------------------------------------------------------------------------------
# Elements
# ---------------------------------------------------------------------------------------------------------

MAX_ATOMIC_NUMBER = 118  # H .. Og; the model's element vocabulary is 0 (padding) + these


# The symbols of H .. Og, in order of atomic number (pymatgen's, checked by the tests): written here so that the
# model's remote code in a model folder, run with only torch and transformers, knows them too.
_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf "
    "Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()


@lru_cache(maxsize=1)
def element_symbols() -> tuple[str, ...]:
    """Index = atomic number: ``("X", "H", "He", ..., "Og")``, "X" standing for padding (Z = 0)."""
    return ("X", *_SYMBOLS)


def atomic_number(symbol: str) -> int:
    """'H' -> 1, ..., 'Og' -> 118; a ValueError for anything else (the padding symbol "X" included)."""
    symbols = element_symbols()
    if symbol not in symbols[1:]:
        raise ValueError(f"unknown element symbol {symbol!r}")
    return symbols.index(symbol)


def __getattr__(name: str):
    # `ELEMENT_SYMBOLS` (= element_symbols()), a tuple built on first use. (Left out of `__all__`, which linters
    # check against the names defined here.)
    if name == "ELEMENT_SYMBOLS":
        return element_symbols()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------
# Crystal systems and their lattice rules
# ---------------------------------------------------------------------------------------------------------

LATTICE_PARAMETERS = ("a", "b", "c", "alpha", "beta", "gamma")
LATTICE_DIM = len(LATTICE_PARAMETERS)


@dataclass(frozen=True)
class CrystalSystem:
    """A crystal system: its space groups ``first..last`` and, for each of (a, b, c, alpha, beta, gamma), its
    rule: the parameter's own name (free), another parameter's name (equal to it) or an angle in degrees
    (fixed)."""

    name: str
    first: int
    last: int
    lattice: tuple[str | float, ...]


# Reference §1.5. Trigonal groups (143..167) use the hexagonal setting.
CRYSTAL_SYSTEMS = (
    CrystalSystem("triclinic", 1, 2, ("a", "b", "c", "alpha", "beta", "gamma")),
    CrystalSystem("monoclinic", 3, 15, ("a", "b", "c", 90.0, "beta", 90.0)),
    CrystalSystem("orthorhombic", 16, 74, ("a", "b", "c", 90.0, 90.0, 90.0)),
    CrystalSystem("tetragonal", 75, 142, ("a", "a", "c", 90.0, 90.0, 90.0)),
    CrystalSystem("hexagonal", 143, 194, ("a", "a", "c", 90.0, 90.0, 120.0)),
    CrystalSystem("cubic", 195, 230, ("a", "a", "a", 90.0, 90.0, 90.0)),
)

# The fixed angles in radians, each written as the one float the model space has always used for it.
_RADIANS = {90.0: math.pi / 2, 120.0: 2 * math.pi / 3}


def _lattice_tables():
    shape = (len(CRYSTAL_SYSTEMS), LATTICE_DIM)
    system_of_group = np.full(NUM_SPACE_GROUPS, -1, dtype=np.int64)
    free = np.zeros(shape, dtype=bool)
    source = np.zeros(shape, dtype=np.int64)
    fixed = np.zeros(shape, dtype=bool)
    degrees = np.zeros(shape, dtype=np.float64)
    radians = np.zeros(shape, dtype=np.float64)
    for s, system in enumerate(CRYSTAL_SYSTEMS):
        system_of_group[system.first - 1 : system.last] = s
        for i, rule in enumerate(system.lattice):
            if isinstance(rule, str):
                source[s, i] = LATTICE_PARAMETERS.index(rule)
                free[s, i] = rule == LATTICE_PARAMETERS[i]
            else:
                source[s, i] = i
                fixed[s, i] = True
                degrees[s, i], radians[s, i] = rule, _RADIANS[rule]
    assert (system_of_group >= 0).all(), "CRYSTAL_SYSTEMS must cover every space group"
    for array in (system_of_group, free, source, fixed, degrees, radians):
        array.setflags(write=False)
    return system_of_group, free, source, fixed, degrees, radians


# Read-only tables derived from CRYSTAL_SYSTEMS, indexed [G - 1] and [crystal system, parameter]:
# CRYSTAL_SYSTEM_OF_GROUP (230,) index into CRYSTAL_SYSTEMS; LATTICE_FREE (6, 6) free parameters;
# LATTICE_SOURCE (6, 6) the parameter each one is copied from (itself unless tied); LATTICE_FIXED (6, 6) fixed
# angles, with their values in LATTICE_FIXED_DEGREES and LATTICE_FIXED_RADIANS (0 where not fixed).
(
    CRYSTAL_SYSTEM_OF_GROUP,
    LATTICE_FREE,
    LATTICE_SOURCE,
    LATTICE_FIXED,
    LATTICE_FIXED_DEGREES,
    LATTICE_FIXED_RADIANS,
) = _lattice_tables()


def crystal_system(space_group: int) -> int:
    """Index into `CRYSTAL_SYSTEMS` of the crystal system of a space group 1..230."""
    g = int(space_group)
    if not 1 <= g <= NUM_SPACE_GROUPS:
        raise ValueError(f"space group {space_group} is outside 1..{NUM_SPACE_GROUPS}")
    return int(CRYSTAL_SYSTEM_OF_GROUP[g - 1])


def _is_tensor(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _torch_table(table: np.ndarray, device, dtype=None):
    import torch

    tensor = torch.from_numpy(table.copy()).to(device)
    return tensor if dtype is None else tensor.to(dtype)


def symmetrize_lattice(lattice, system, degrees: bool = True):
    """Impose the crystal system's rules on lattices (..., 6): a tied parameter becomes a copy of the one it
    equals, a fixed angle is set to exactly 90 or 120 degrees (pi/2 or 2 pi/3 with ``degrees=False``).

    ``system`` holds crystal-system indices (see `crystal_system`), one per lattice. numpy arrays give float64;
    torch tensors keep the lattice's dtype and device (``system`` then a long tensor).
    """
    values = LATTICE_FIXED_DEGREES if degrees else LATTICE_FIXED_RADIANS
    if _is_tensor(lattice):
        import torch

        device = lattice.device
        system = torch.as_tensor(system, device=device)
        source = _torch_table(LATTICE_SOURCE, device)[system]
        fixed = _torch_table(LATTICE_FIXED, device)[system]
        value = _torch_table(values, device, lattice.dtype)[system]
        return torch.where(fixed, value, lattice.gather(-1, source))
    lattice = np.asarray(lattice, dtype=np.float64)
    system = np.asarray(system)
    tied = np.take_along_axis(lattice, LATTICE_SOURCE[system], axis=-1)
    return np.where(LATTICE_FIXED[system], values[system], tied)


def crystal_system_lattice(space_group: int, lattice) -> np.ndarray:
    """Symmetrise one (a, b, c, alpha, beta, gamma) in degrees for the crystal system of ``space_group``."""
    lattice = np.asarray(lattice, dtype=np.float64)
    if lattice.shape != (LATTICE_DIM,):
        raise ValueError(f"a lattice is {LATTICE_DIM} parameters (a, b, c, alpha, beta, gamma), got {lattice.shape}")
    return symmetrize_lattice(lattice, crystal_system(space_group), degrees=True)


# ---------------------------------------------------------------------------------------------------------
# Model-space lattice: lengths divided by N^(1/3) (N = atoms in the conventional cell), angles in radians
# ---------------------------------------------------------------------------------------------------------


def lattice_length_scale(num_atoms):
    """N^(1/3): a model-space length is the physical length (Å) divided by it."""
    return num_atoms ** (1 / 3)


def physical_to_model_lattice(lattice, num_atoms: int) -> np.ndarray:
    """(a, b, c in Å, angles in degrees) -> model space, as float64."""
    lattice = np.asarray(lattice, dtype=np.float64)
    return np.concatenate([lattice[:3] / lattice_length_scale(num_atoms), np.radians(lattice[3:])])


def model_to_physical_lattice(L, num_atoms):
    """Model space -> (a, b, c in Å, angles in degrees).

    One lattice (6,) with an int ``num_atoms`` gives float64 (numpy); a batch of tensors L (B, 6) with
    ``num_atoms`` (B,) stays in L's dtype, counting at least one atom per crystal. The angles are not
    symmetrised: see `symmetrize_lattice` for exact 90 / 120 degree angles.
    """
    if _is_tensor(L):
        import torch

        scale = lattice_length_scale(num_atoms.to(L.dtype).clamp_min(1))
        return torch.cat([L[:, :3] * scale[:, None], torch.rad2deg(L[:, 3:])], dim=-1)
    L = np.asarray(L, dtype=np.float64)
    return np.concatenate([L[:3] * lattice_length_scale(num_atoms), np.degrees(L[3:])])


__all__ = [
    "CRYSTAL_SYSTEMS",
    "CRYSTAL_SYSTEM_OF_GROUP",
    "DEFAULT_N_MAX",
    "LATTICE_DIM",
    "LATTICE_FIXED",
    "LATTICE_FIXED_DEGREES",
    "LATTICE_FIXED_RADIANS",
    "LATTICE_FREE",
    "LATTICE_PARAMETERS",
    "LATTICE_SOURCE",
    "LETTERS",
    "MAX_ATOMIC_NUMBER",
    "NUM_SPACE_GROUPS",
    "SPACE_GROUPS",
    "TOKENS_PER_SITE",
    "TRANSLATION_DENOMINATOR",
    "WYCK_TYPES",
    "CrystalSystem",
    "atomic_number",
    "crystal_system",
    "crystal_system_lattice",
    "element_symbols",
    "index_to_letter",
    "lattice_length_scale",
    "letter_to_index",
    "model_to_physical_lattice",
    "physical_to_model_lattice",
    "symmetrize_lattice",
]
