"""The crystal tokenizer: pymatgen structures <-> CrystalFormer's (G, W, A, XYZ, L) tokens.

Encoding follows the reference exactly (reference doc §1.3): spglib's refined conventional cell, pyxtal's
Wyckoff assignment (tol 0.01, retried at 1e-4), the op0 representative of every orbit, sites sorted by
(W, x, y, z), lattice lengths divided by N^(1/3) (N = atoms in the conventional cell) and angles in radians.
Decoding expands each representative into its orbit as the reference's ``symmetrize_atoms`` does.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..crystallography import (
    DEFAULT_N_MAX,
    ELEMENT_SYMBOLS,
    NUM_SPACE_GROUPS,
    TRANSLATION_DENOMINATOR,
    WYCK_TYPES,
    crystal_system_lattice,
    index_to_letter,
    lattice_length_scale,
    letter_to_index,
    model_to_physical_lattice,
    physical_to_model_lattice,
)
from ..wyckoff import WyckoffTables, apply_op
from .errors import (
    CrystalTokenizationError,
    DisorderedStructureError,
    EmptyStructureError,
    InvalidStructureError,
    InvalidTokensError,
    SymmetryAnalysisError,
    TooManySitesError,
)


if TYPE_CHECKING:
    import torch
    from pymatgen.core import Structure

    BatchArray = np.ndarray | torch.Tensor


TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
TOKEN_FIELDS = ("G", "W", "A", "XYZ", "L")
# A CrystalFormer token string: a space group, a Wyckoff letter and an element symbol first, on one line
# ("225-a-La-0-0-0-...-5.1-5.1-5.1-90-90-90"); never a CIF, a path or JSON.
_TOKEN_STRING = re.compile(r"^\d{1,3}-[a-zA-Z]-[A-Z][a-z]?-[^\n]*$")


def is_token_string(text: str) -> bool:
    """Whether ``text`` has the form of a CrystalFormer token string (the one rule every reader of them uses)."""
    return bool(_TOKEN_STRING.match(text.strip()))


class TokenBatch(Protocol):
    """What :meth:`CrystalTokens.from_sampler_output` reads: batched token arrays, e.g. ``CrystalSamplerOutput``."""

    G: BatchArray
    W: BatchArray
    A: BatchArray
    XYZ: BatchArray
    L: BatchArray


def _format_number(value: float, decimals: int = 6) -> str:
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


@dataclass
class CrystalTokens:
    """One crystal in CrystalFormer's token layout, padded to ``n_max`` sites.

    ``L`` is in model space: lengths in Å divided by N^(1/3) and angles in radians (reference doc §1.5).
    The decoded structure is cached (see :meth:`to_structure`); assigning a field clears the cache, changing an
    array in place does not.
    """

    G: int
    W: np.ndarray  # (n_max,) int, 0 = padding
    A: np.ndarray  # (n_max,) int, atomic number, 0 = padding
    XYZ: np.ndarray  # (n_max, 3) float, fractional coordinates of the orbit representatives
    L: np.ndarray  # (6,) float
    # The decoded Structure, or the CrystalTokenizationError decoding raised; None = not decoded yet.
    _decoded: Any = field(default=None, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in TOKEN_FIELDS:  # new tokens, so the cached structure is stale
            object.__setattr__(self, "_decoded", None)
        object.__setattr__(self, name, value)

    @classmethod
    def from_batch(
        cls, G: BatchArray, W: BatchArray, A: BatchArray, XYZ: BatchArray, L: BatchArray
    ) -> list[CrystalTokens]:
        """One ``CrystalTokens`` per row of batched arrays or tensors as the sampler returns them: G (B,),
        W and A (B, n), XYZ (B, n, 3), L (B, 6). Rows are views of the (numpy) arrays, not copies."""
        G, W, A, XYZ, L = (np.asarray(_to_numpy(x)) for x in (G, W, A, XYZ, L))
        sizes = {len(x) for x in (G, W, A, XYZ, L)}
        if len(sizes) != 1:
            raise ValueError(f"G, W, A, XYZ, L disagree on the batch size: {[len(x) for x in (G, W, A, XYZ, L)]}")
        return [cls(int(g), w, a, xyz, lat) for g, w, a, xyz, lat in zip(G, W, A, XYZ, L)]

    @classmethod
    def from_sampler_output(cls, output: TokenBatch) -> list[CrystalTokens]:
        """:meth:`from_batch` of anything with batched ``G, W, A, XYZ, L`` (e.g. ``CrystalSamplerOutput``)."""
        return cls.from_batch(output.G, output.W, output.A, output.XYZ, output.L)

    @property
    def n_max(self) -> int:
        return len(self.W)

    @property
    def num_sites(self) -> int:
        return int(np.count_nonzero(self.W))

    @property
    def num_atoms(self) -> int:
        return int(WyckoffTables.load().mult[self.G - 1, self.W].sum())

    @property
    def lattice(self) -> np.ndarray:
        """Physical lattice parameters (a, b, c in Å, angles in degrees)."""
        return model_to_physical_lattice(self.L, self.num_atoms)

    @property
    def formula(self) -> str:
        from pymatgen.core import Composition

        tables = WyckoffTables.load()
        counts: dict[str, int] = {}
        for w, a in zip(self.W[: self.num_sites], self.A[: self.num_sites]):
            symbol = ELEMENT_SYMBOLS[int(a)]
            counts[symbol] = counts.get(symbol, 0) + int(tables.mult[self.G - 1, w])
        return Composition(counts).formula

    def to_structure(self) -> Structure:
        """The pymatgen ``Structure``, decoded once and cached: every caller (each reward, the trainer's metrics)
        gets the same object, so copy it (``structure.copy()``) before changing it. Tokens that are no crystal
        raise ``InvalidTokensError`` on every call."""
        if self._decoded is None:
            try:
                decoded = decode_tokens(self.G, self.W, self.A, self.XYZ, self.L)
            except CrystalTokenizationError as exc:
                decoded = exc
            object.__setattr__(self, "_decoded", decoded)
        if isinstance(self._decoded, CrystalTokenizationError):
            raise self._decoded.with_traceback(None)
        return self._decoded

    def to_string(self, decimals: int = 6) -> str:
        """The paper's readable form, e.g. ``225-a-La-0-0-0-c-H-1/4-1/4-1/4-...-5.1-5.1-5.1-90-90-90``.

        Constant coordinates of a Wyckoff position are written as fractions, free ones as decimals; the
        lattice is physical (Å and degrees).
        """
        tables = WyckoffTables.load()
        parts = [str(int(self.G))]
        for i in range(self.num_sites):
            w = int(self.W[i])
            parts += [index_to_letter(w), ELEMENT_SYMBOLS[int(self.A[i])]]
            for j in range(3):
                value = float(self.XYZ[i, j])
                if tables.fc_mask[self.G - 1, w, j]:
                    parts.append(_format_number(value, decimals))
                else:
                    parts.append(str(Fraction(value).limit_denominator(TRANSLATION_DENOMINATOR)))
        parts += [_format_number(v, decimals) for v in self.lattice]
        return "-".join(parts)

    @classmethod
    def from_string(cls, text: str, n_max: int = DEFAULT_N_MAX) -> CrystalTokens:
        # "-" separates fields; a "-" right after a separator is a minus sign (sampled lattices can be negative).
        fields = re.split(r"(?<!-)-", text.strip())
        try:
            space_group = int(fields[0])
            body, lattice = fields[1:-6], [float(v) for v in fields[-6:]]
            if len(body) % 5 or len(fields) < 7:
                raise ValueError(
                    "expected G, then 5 fields per site (letter, element, x, y, z), then 6 lattice values"
                )
            sites = [body[i : i + 5] for i in range(0, len(body), 5)]
            W = [letter_to_index(s[0]) for s in sites]
            A = [ELEMENT_SYMBOLS.index(s[1]) for s in sites]
            XYZ = [[float(Fraction(v)) for v in s[2:]] for s in sites]
        except (ValueError, IndexError) as exc:
            raise InvalidTokensError(f"cannot parse crystal string {text!r}: {exc}") from exc
        if len(sites) >= n_max:
            raise TooManySitesError(f"{len(sites)} sites in {text!r}; at most {n_max - 1} fit n_max={n_max}")
        tokens = cls.from_sites(space_group, W, A, XYZ, np.zeros(6), n_max)
        tokens.L = physical_to_model_lattice(lattice, tokens.num_atoms)
        return tokens

    @classmethod
    def from_sites(cls, G, W, A, XYZ, L, n_max: int = DEFAULT_N_MAX) -> CrystalTokens:
        """Build from unpadded per-site lists (as stored in a dataset row), padding to ``n_max``."""
        n = len(W)
        if not 1 <= int(G) <= NUM_SPACE_GROUPS:
            raise InvalidTokensError(f"space group {G} is outside 1..{NUM_SPACE_GROUPS}")
        if n > n_max:
            raise TooManySitesError(f"{n} sites do not fit n_max={n_max}")
        w = np.zeros(n_max, dtype=np.int64)
        a = np.zeros(n_max, dtype=np.int64)
        xyz = np.zeros((n_max, 3), dtype=np.float64)
        w[:n], a[:n] = W, A
        if n:
            xyz[:n] = np.array([np.asarray(p, dtype=np.float64) for p in XYZ]).reshape(n, 3)  # nested lists or arrays
        return cls(int(G), w, a, xyz, np.asarray(L, dtype=np.float64))

    def as_dict(self) -> dict[str, Any]:
        """Unpadded, JSON-serialisable row (the layout stored in datasets)."""
        n = self.num_sites
        return {
            "G": int(self.G),
            "W": self.W[:n].tolist(),
            "A": self.A[:n].tolist(),
            "XYZ": self.XYZ[:n].tolist(),
            "L": self.L.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], n_max: int = DEFAULT_N_MAX) -> CrystalTokens:
        return cls.from_sites(d["G"], d["W"], d["A"], d["XYZ"], d["L"], n_max)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CrystalTokens):
            return NotImplemented
        return (
            self.G == other.G
            and np.array_equal(self.W, other.W)
            and np.array_equal(self.A, other.A)
            and np.allclose(self.XYZ, other.XYZ)
            and np.allclose(self.L, other.L)
        )


def _wrap(xyz: np.ndarray) -> np.ndarray:
    wrapped = xyz - np.floor(xyz)
    wrapped[wrapped >= 1.0 - 1e-10] = 0.0  # 0.99999999999 is the same point as 0
    return wrapped


def expand_orbit(space_group: int, wyckoff: int, xyz: np.ndarray) -> np.ndarray:
    """All ``mult`` positions of the orbit of ``xyz`` under Wyckoff position ``wyckoff``.

    As the reference: map ``xyz`` by every general op, keep the image closest to being a fixed point of op0
    (so a point that is off its representative still lands on the right orbit), then apply the position's ops.
    """
    tables = WyckoffTables.load()
    images = _wrap(apply_op(tables.general_ops(space_group), np.asarray(xyz, dtype=np.float64)))
    diff = apply_op(tables.op0[space_group - 1, wyckoff], images) - images
    diff -= np.rint(diff)
    best = images[np.argmin(np.linalg.norm(diff, axis=-1))]
    return _wrap(apply_op(tables.orbit(space_group, wyckoff), best))


def _offset_from_op0(op0: np.ndarray, points: np.ndarray) -> np.ndarray:
    """How far op0 moves each point (..., 3), modulo lattice translations: 0 on the representative's form."""
    d = apply_op(op0, points) - points
    return np.abs(d - np.rint(d)).max(axis=-1)


def equivalent_representatives(space_group: int, wyckoff: int, xyz) -> np.ndarray:
    """Every distinct orbit member of ``xyz`` that the position's op0 leaves fixed, (k, 3); empty if ``xyz`` is
    not on the orbit of position ``wyckoff``.

    Each is a valid coordinate token for the same site of the same crystal: pyxtal (and so the reference) picks
    one of them, e.g. any of the 192 images of a general position of Fm-3m.
    """
    tables = WyckoffTables.load()
    op0 = tables.op0[space_group - 1, wyckoff]
    images = _wrap(apply_op(tables.general_ops(space_group), np.asarray(xyz, dtype=np.float64)))
    candidates = _wrap(apply_op(op0, images[_offset_from_op0(op0, images) < 1e-6]))
    _, first = np.unique(np.round(candidates, 6) % 1.0, axis=0, return_index=True)
    return candidates[np.sort(first)]


@cache
def _normalizer_cosets(space_group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pyxtal's coset representatives of the group's normalizer, (n, 3, 4); the Wyckoff index each maps every
    index to, (n, WYCK_TYPES) (padding 0 to 0); whether its rotation is ±1, which keeps every metric. The
    identity comes first."""
    from pyxtal.operations import SymmOp
    from pyxtal.symmetry import Group

    alternatives = Group(space_group).get_alternatives()
    ops, maps = [], []
    for xyz, letters in zip(alternatives["Coset Representative"], alternatives["Transformed WP"]):
        ops.append(SymmOp.from_xyz_str(xyz).affine_matrix[:3])
        mapping = np.zeros(WYCK_TYPES, dtype=np.int64)
        mapping[1 : len(letters.split()) + 1] = [letter_to_index(letter) for letter in letters.split()]
        maps.append(mapping)
    ops = np.stack(ops)
    plus_minus_one = np.array([np.allclose(op[:, :3], np.eye(3)) or np.allclose(op[:, :3], -np.eye(3)) for op in ops])
    return ops, np.stack(maps), plus_minus_one


@lru_cache(maxsize=262_144)
def _site_descriptions(space_group: int, wyckoff: int, xyz: tuple[float, float, float]) -> tuple:
    """Per normalizer coset: the site's new Wyckoff index and its equivalent representatives there."""
    ops, maps, _ = _normalizer_cosets(space_group)
    descriptions = []
    for op, mapping in zip(ops, maps):
        w = int(mapping[wyckoff])
        choices = equivalent_representatives(space_group, w, apply_op(op, np.asarray(xyz)))
        choices.setflags(write=False)
        descriptions.append((w, choices))
    return tuple(descriptions)


def random_representatives(tokens: CrystalTokens, rng: np.random.Generator) -> CrystalTokens:
    """The same crystal written another valid way, drawn at random, a training-time augmentation (the reference
    has none): a random coset of the space group's normalizer whose rotation keeps this cell's metric (origin
    shifts, inversion; axis swaps where the cell allows them), which may relabel the Wyckoff positions (CsCl's
    Cs 1a + Cl 1b is also Cs 1b + Cl 1a), then a random equivalent representative of each site, the sites
    re-sorted by (W, x, y, z) as the tokenizer sorts them. Lattice parameters and elements are unchanged."""
    n, G = tokens.num_sites, tokens.G
    ops, _, plus_minus_one = _normalizer_cosets(G)
    k = int(rng.integers(len(ops)))
    if not plus_minus_one[k]:
        from pymatgen.core import Lattice

        metric, rotation = Lattice.from_parameters(*tokens.lattice).metric_tensor, ops[k][:, :3]
        if not np.allclose(rotation.T @ metric @ rotation, metric, rtol=1e-5, atol=1e-8):
            k = 0
    sites = [_site_descriptions(G, int(w), tuple(np.round(xyz, 10))) for w, xyz in zip(tokens.W[:n], tokens.XYZ[:n])]
    if any(len(site[k][1]) == 0 for site in sites):  # not expected; keep the crystal's own setting then
        k = 0
    W = np.array([site[k][0] for site in sites], dtype=np.int64)
    XYZ = tokens.XYZ[:n].copy()
    for i, site in enumerate(sites):
        choices = site[k][1]
        if len(choices):
            XYZ[i] = choices[rng.integers(len(choices))]
    order = np.lexsort((XYZ[:, 2], XYZ[:, 1], XYZ[:, 0], W))
    return CrystalTokens.from_sites(G, W[order], tokens.A[:n][order], XYZ[order], tokens.L, tokens.n_max)


def decode_tokens(G, W, A, XYZ, L):
    """Tokens (model-space lattice) -> pymatgen ``Structure``; raises InvalidTokensError on bad tokens."""
    from pymatgen.core import Lattice, Structure

    tables = WyckoffTables.load()
    G = int(G)
    W, A = np.asarray(W).astype(np.int64), np.asarray(A).astype(np.int64)
    XYZ, L = np.asarray(XYZ, dtype=np.float64), np.asarray(L, dtype=np.float64)
    if not 1 <= G <= NUM_SPACE_GROUPS:
        raise InvalidTokensError(f"space group {G} is outside 1..{NUM_SPACE_GROUPS}")
    sites = np.flatnonzero(W)
    if len(sites) == 0:
        raise InvalidTokensError("no atoms: every Wyckoff letter is padding")
    if np.any(W[sites] > tables.wmax[G - 1]):
        raise InvalidTokensError(f"Wyckoff letter beyond the {tables.wmax[G - 1]} positions of space group {G}")
    if np.any(A[sites] <= 0) or np.any(A[sites] >= len(ELEMENT_SYMBOLS)):
        raise InvalidTokensError("a site has no element (A = 0) or an atomic number > 118")
    if not (np.all(np.isfinite(XYZ[sites])) and np.all(np.isfinite(L))):
        raise InvalidTokensError("non-finite coordinates or lattice")
    num_atoms = int(tables.mult[G - 1, W[sites]].sum())
    params = crystal_system_lattice(G, model_to_physical_lattice(L, num_atoms))
    if np.any(params[:3] <= 0) or np.any(params[3:] <= 0) or np.any(params[3:] >= 180):
        raise InvalidTokensError(f"unphysical lattice parameters {np.round(params, 4).tolist()}")
    species, coords = [], []
    for i in sites:
        orbit = expand_orbit(G, int(W[i]), XYZ[i])
        coords.append(orbit)
        species += [ELEMENT_SYMBOLS[A[i]]] * len(orbit)
    try:
        lattice = Lattice.from_parameters(*params)
        if not lattice.volume > 0:
            raise ValueError("zero volume")
    except ValueError as exc:
        raise InvalidTokensError(f"lattice parameters {np.round(params, 4).tolist()} give no cell: {exc}") from exc
    return Structure(lattice, species, np.concatenate(coords))


class CrystalTokenizer:
    """Turns crystals (pymatgen ``Structure``, CIF text or file, or a structure dict) into ``CrystalTokens``.

    ``symprec`` is spglib's tolerance for the refined cell; pyxtal's Wyckoff assignment uses ``tol`` and, if it
    fails, ``retry_tol`` — the reference's 0.01 / 1e-4.
    """

    def __init__(self, n_max: int = DEFAULT_N_MAX, symprec: float = 0.01, tol: float = 0.01, retry_tol: float = 1e-4):
        self.n_max = n_max
        self.symprec = symprec
        self.tol = tol
        self.retry_tol = retry_tol

    # ----------------------------------------------------------------------------------------- encoding
    def encode(self, crystal, name: str | None = None) -> CrystalTokens:
        structure = to_structure(crystal, name)
        label = name or structure.composition.reduced_formula
        if len(structure) == 0:
            raise EmptyStructureError(f"{label}: the structure has no sites")
        if not structure.is_ordered:
            raise DisorderedStructureError(
                f"{label}: partial occupancy or mixed species on a site; CrystalFormer needs an ordered crystal"
            )
        xtal = self._wyckoff_assignment(structure, label)
        tables = WyckoffTables.load()
        G = int(xtal.group.number)
        sites = xtal.atom_sites
        if len(sites) >= self.n_max:
            raise TooManySitesError(
                f"{label}: {len(sites)} symmetry-inequivalent sites; at most {self.n_max - 1} fit n_max={self.n_max}"
            )
        W = np.array([letter_to_index(site.wp.letter) for site in sites], dtype=np.int64)
        A = np.array([_atomic_number(site.specie, label) for site in sites], dtype=np.int64)
        XYZ = np.stack([self._representative(G, w, site.position) for w, site in zip(W, sites)])
        num_atoms = int(tables.mult[G - 1, W].sum())
        L = np.array(xtal.lattice.get_para(), dtype=np.float64)  # lengths in Å, angles in radians
        L[:3] /= lattice_length_scale(num_atoms)
        XYZ = XYZ - np.floor(XYZ)
        order = np.lexsort((XYZ[:, 2], XYZ[:, 1], XYZ[:, 0], W))
        return CrystalTokens.from_sites(G, W[order], A[order], XYZ[order], L, self.n_max)

    def _wyckoff_assignment(self, structure, label: str):
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
        from pyxtal import pyxtal

        try:
            refined = SpacegroupAnalyzer(structure, symprec=self.symprec).get_refined_structure()
        except Exception as exc:  # spglib raises several types
            raise SymmetryAnalysisError(f"{label}: spglib could not refine the cell ({exc})") from exc
        errors = []
        for tol in (self.tol, self.retry_tol):
            xtal = pyxtal()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    xtal.from_seed(refined, tol=tol)
                return xtal
            except Exception as exc:  # pyxtal raises bare Exceptions
                errors.append(f"tol={tol}: {exc}")
        raise SymmetryAnalysisError(f"{label}: pyxtal found no Wyckoff assignment ({'; '.join(errors)})")

    @staticmethod
    def _representative(G: int, w: int, position: np.ndarray) -> np.ndarray:
        """The orbit member that op0 leaves fixed (pyxtal usually returns it already)."""
        tables = WyckoffTables.load()
        op0 = tables.op0[G - 1, w]
        position = np.asarray(position, dtype=np.float64)
        if _offset_from_op0(op0, position) < 1e-3:
            return position
        candidates = apply_op(tables.general_ops(G), position)
        errors = _offset_from_op0(op0, candidates)
        best = int(np.argmin(errors))
        if errors[best] > 1e-3:
            raise SymmetryAnalysisError(f"no orbit member of {position} is fixed by op0 of {G}{index_to_letter(w)}")
        return apply_op(op0, candidates[best])

    def __call__(self, crystals, **kwargs):
        return self.batch_encode(crystals, **kwargs)

    def batch_encode(
        self,
        crystals: Iterable,
        names: Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        skip_errors: bool = False,
    ):
        """Encode many crystals and collate them (padding to the longest crystal plus one lattice site).

        With ``skip_errors`` bad crystals are left out and reported in the ``errors`` entry as (index, reason).
        """
        tokens, errors = [], []
        for i, crystal in enumerate(crystals):
            name = names[i] if names is not None else f"crystal {i}"
            try:
                tokens.append(self.encode(crystal, name=name))
            except CrystalTokenizationError as exc:
                if not skip_errors:
                    raise
                errors.append((i, str(exc)))
        batch = CrystalCollator(self.n_max, return_tensors=return_tensors)(tokens)
        if skip_errors:
            batch["errors"] = errors
        return batch

    # ----------------------------------------------------------------------------------------- decoding
    def decode(self, tokens: CrystalTokens | str):
        if isinstance(tokens, str):
            tokens = CrystalTokens.from_string(tokens, self.n_max)
        return tokens.to_structure()

    def decode_batch(self, G, W, A, XYZ, L, skip_errors: bool = True) -> list:
        """Decode batched arrays or tensors (as returned by the sampler); bad rows become ``None``."""
        structures = []
        for tokens in CrystalTokens.from_batch(G, W, A, XYZ, L):
            try:
                structures.append(tokens.to_structure())
            except InvalidTokensError:
                if not skip_errors:
                    raise
                structures.append(None)
        return structures

    # ---------------------------------------------------------------------------------------- save/load
    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer_class": type(self).__name__,
            "n_max": self.n_max,
            "symprec": self.symprec,
            "tol": self.tol,
            "retry_tol": self.retry_tol,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **push_kwargs) -> str:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / TOKENIZER_CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        if push_to_hub:
            self.push_to_hub(push_kwargs.pop("repo_id", path.name), **push_kwargs)
        return str(path / TOKENIZER_CONFIG_NAME)

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload CrystalTokenizer", **kwargs) -> str:
        from huggingface_hub import HfApi

        api = HfApi(token=kwargs.pop("token", None))
        api.create_repo(repo_id, exist_ok=True, private=kwargs.pop("private", None))
        info = api.upload_file(
            path_or_fileobj=json.dumps(self.to_dict(), indent=2).encode(),
            path_in_repo=TOKENIZER_CONFIG_NAME,
            repo_id=repo_id,
            commit_message=commit_message,
            **kwargs,
        )
        return str(info)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> CrystalTokenizer:
        """Load from a local folder or a Hub repo id (``revision``, ``cache_dir``, ``token`` are passed on)."""
        path = Path(name_or_path)
        if path.is_dir():
            config_file = path / TOKENIZER_CONFIG_NAME
            if not config_file.exists():
                raise FileNotFoundError(f"{path} has no {TOKENIZER_CONFIG_NAME}")
        else:
            from huggingface_hub import hf_hub_download

            hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "subfolder") if k in kwargs}
            config_file = Path(hf_hub_download(str(name_or_path), TOKENIZER_CONFIG_NAME, **hub_kwargs))
        config = json.loads(config_file.read_text())
        config.pop("tokenizer_class", None)
        config.update(kwargs)
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if k != "tokenizer_class")
        return f"{type(self).__name__}({args})"


def to_structure(crystal: Any, name: str | None = None, *, files: bool = True) -> Structure:
    """The one "anything -> pymatgen Structure" converter of the package (tokenizer, rewards, evaluation).

    Accepted: a ``Structure`` (returned as is); anything with a ``to_structure()`` method (``CrystalTokens``:
    its cached structure, shared, so copy before changing it); a mapping with a ``"structure"`` key (its value,
    converted again); a token row (``G, W, A, XYZ, L`` keys); a pymatgen Structure dict or its JSON; a
    CrystalFormer token string (``225-a-La-0-0-0-...-5.1-5.1-5.1-90-90-90``); CIF text; a path to a CIF (or other
    pymatgen-readable) file; an ASE ``Atoms``. Raises ``InvalidStructureError`` (or ``EmptyStructureError``) with
    a one-line message naming the input and the reason; a token string that is no crystal raises
    ``InvalidTokensError``. With ``files=False`` a string is never taken for a path to open (a table cell
    holding a path is an invalid crystal, not a file read from the machine).
    """
    from pymatgen.core import Structure

    if isinstance(crystal, Structure):
        return crystal
    if callable(getattr(crystal, "to_structure", None)):
        return to_structure(crystal.to_structure(), name)
    label = name or _describe(crystal)
    if isinstance(crystal, Mapping):
        if "structure" in crystal:
            return to_structure(crystal["structure"], name)
        if all(k in crystal for k in TOKEN_FIELDS):  # an unpadded token row, as stored in datasets
            return CrystalTokens.from_dict(crystal).to_structure()
        return _from_structure_dict(crystal, label, "dict")
    if any(c.__name__ == "Atoms" for c in type(crystal).__mro__) and hasattr(crystal, "get_cell"):  # ASE, duck-typed
        from pymatgen.io.ase import AseAtomsAdaptor

        try:
            return AseAtomsAdaptor.get_structure(crystal)
        except Exception as exc:  # e.g. an Atoms without a cell
            raise InvalidStructureError(
                _one_line(f"{label}: unusable ASE Atoms ({type(exc).__name__}: {exc})")
            ) from exc
    if isinstance(crystal, os.PathLike):
        return _from_file(Path(crystal), label)
    if not isinstance(crystal, str):
        raise InvalidStructureError(f"{label}: cannot read a structure from a {type(crystal).__name__}")
    text = crystal.strip()
    if not text:
        raise InvalidStructureError(f"{label}: empty text")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidStructureError(_one_line(f"{label}: not a pymatgen Structure JSON ({exc})")) from exc
        if isinstance(data, Mapping) and "structure" in data:
            return to_structure(data["structure"], name)
        return _from_structure_dict(data, label, "JSON")
    if "\n" not in text:  # one line: a file, else a token string
        if is_token_string(text):
            return CrystalTokens.from_string(text).to_structure()
        if not files:
            raise InvalidStructureError(
                _one_line(f"{label}: {text[:100]!r} is not CIF text or a token string (a path is not opened here)")
            )
        path = Path(text)
        try:
            is_file = path.is_file()
        except OSError:  # e.g. a name too long for the file system
            is_file = False
        if is_file:
            return _from_file(path, label)
        raise InvalidStructureError(f"{label}: no such file (and not CIF text or a token string)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_str(text, fmt="cif")
    except Exception as exc:
        if "no structures" in str(exc) and "_cell_length_a" in text and "_atom_site" not in text:
            raise EmptyStructureError(f"{label}: the CIF has a cell but no atom sites") from exc
        raise InvalidStructureError(_one_line(f"{label}: unparsable CIF ({type(exc).__name__}: {exc})")) from exc


def _from_structure_dict(data: Any, label: str, what: str) -> Structure:
    from pymatgen.core import Structure

    try:
        return Structure.from_dict(data)
    except Exception as exc:
        keys = f"keys {sorted(map(str, data))[:8]}" if isinstance(data, Mapping) else type(data).__name__
        raise InvalidStructureError(
            _one_line(f"{label}: not a pymatgen Structure {what} and no 'structure' key ({keys}; {exc!r})")
        ) from exc


def _from_file(path: Path, label: str) -> Structure:
    from pymatgen.core import Structure

    if not path.is_file():
        raise InvalidStructureError(f"{label}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_file(path)
    except Exception as exc:
        raise InvalidStructureError(_one_line(f"{label}: unparsable structure file ({exc})")) from exc


def _describe(crystal: Any) -> str:
    """A short one-line name of an input for error messages: a text's first line (shortened), else a bounded repr."""
    if isinstance(crystal, (str, os.PathLike)):
        text = str(crystal).strip()
        first = text.splitlines()[0] if text else ""
        return repr(first if len(first) <= 60 else first[:57] + "...")
    return _one_line(reprlib.repr(crystal))


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _atomic_number(specie, label: str) -> int:
    """Atomic number of a pyxtal/pymatgen species ('Fe', 'Fe2+', an Element or Species)."""
    from pymatgen.core.periodic_table import get_el_sp

    try:
        element = get_el_sp(str(specie))
        return int(getattr(element, "element", element).Z)
    except (ValueError, KeyError, AttributeError) as exc:
        raise InvalidStructureError(f"{label}: unknown species {specie!r} ({exc})") from exc


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x


class CrystalCollator:
    """Collate CrystalTokens (or dataset rows with G, W, A, XYZ, L) into a padded batch.

    Pads to the longest crystal of the batch plus one site, where the model reads out the lattice, capped at
    ``n_max``: short crystals cost short sequences.

    With ``random_representatives`` every crystal is rewritten in a random equivalent description (a normalizer
    coset, then a representative per site; :func:`random_representatives`), a training-time augmentation.
    """

    def __init__(
        self,
        n_max: int = DEFAULT_N_MAX,
        return_tensors: str | None = "pt",
        random_representatives: bool = False,
        seed: int | None = None,
    ):
        self.n_max = n_max
        self.return_tensors = return_tensors
        self.random_representatives = random_representatives
        self.rng = np.random.default_rng(seed)

    def __call__(self, examples: Sequence) -> dict[str, Any]:
        tokens = [e if isinstance(e, CrystalTokens) else CrystalTokens.from_dict(e, self.n_max) for e in examples]
        if self.random_representatives:
            tokens = [random_representatives(t, self.rng) for t in tokens]
        length = min(max((t.num_sites for t in tokens), default=0) + 1, self.n_max)
        batch = {
            "G": np.array([t.G for t in tokens], dtype=np.int64),
            "W": np.stack([t.W[:length] for t in tokens]) if tokens else np.zeros((0, length), np.int64),
            "A": np.stack([t.A[:length] for t in tokens]) if tokens else np.zeros((0, length), np.int64),
            "XYZ": np.stack([t.XYZ[:length] for t in tokens]) if tokens else np.zeros((0, length, 3)),
            "L": np.stack([t.L for t in tokens]) if tokens else np.zeros((0, 6)),
        }
        if self.return_tensors == "pt":
            import torch

            return {k: torch.as_tensor(v, dtype=torch.long if k in "GWA" else torch.float32) for k, v in batch.items()}
        if self.return_tensors == "np":
            return batch
        return {k: v.tolist() for k, v in batch.items()}


__all__ = [
    "CrystalCollator",
    "CrystalTokenizer",
    "CrystalTokens",
    "decode_tokens",
    "equivalent_representatives",
    "expand_orbit",
    "random_representatives",
    "to_structure",
]
