import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalformer_rl.tokenization import (
    CrystalCollator,
    CrystalTokenizationError,
    CrystalTokenizer,
    CrystalTokens,
    DisorderedStructureError,
    EmptyStructureError,
    InvalidStructureError,
    InvalidTokensError,
    TooManySitesError,
    WyckoffTables,
    crystal_system_lattice,
    equivalent_representatives,
    expand_orbit,
    random_representatives,
)


warnings.filterwarnings("ignore", module="pymatgen")


@pytest.fixture(scope="module")
def tokenizer():
    return CrystalTokenizer()


@pytest.fixture(scope="module")
def parity(shared):
    folder = shared / "fixtures" / "reference_parity"
    return pd.read_csv(folder / "structures.csv"), dict(np.load(folder / "tokens.npz"))


# ------------------------------------------------------------------------------------------ Wyckoff tables
def test_shipped_tables_equal_a_fresh_build_from_pyxtal():
    shipped, fresh = WyckoffTables.load(), WyckoffTables.from_pyxtal()
    for field in ("mult", "wmax", "dof0", "fc_mask", "op0", "orbit_ops", "orbit_start"):
        np.testing.assert_array_equal(getattr(shipped, field), getattr(fresh, field), err_msg=field)


def test_table_facts_match_the_reference():
    t = WyckoffTables.load()
    present = t.mult > 0
    assert present.sum() == 1731
    assert (t.dof0 & present).sum() == 616
    assert t.mult.max() == 192 and t.mult.sum() == 14433
    assert t.wmax.min() == 1 and t.wmax.max() == 27 and t.wmax[46] == 27  # Pmmm uses 'A'
    np.testing.assert_array_equal(t.mult[224, 1:13], [4, 4, 8, 24, 24, 32, 48, 48, 48, 96, 96, 192])
    np.testing.assert_array_equal(t.dof0[224, 1:13], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    assert t.fc_mask[224, 6].all()  # 'f' = (x, x, x): all three coordinates count
    assert t.dof0[:, 0].all() and not t.fc_mask[:, 0].any()  # padding
    assert np.all(np.triu(t.op0[..., :3], 1) == 0)  # lower triangular: sequential x -> y -> z is valid
    assert t.symbol(225, 3) == "8c"


@pytest.mark.parametrize(
    "g, w, xyz",
    [(166, 3, (0, 0, 0.5619)), (225, 5, (0, 0, 0.7334)), (225, 8, (0, 0.23, 0.23)), (194, 8, (0.17, 0.34, 0.25))],
)
def test_orbit_expansion_equals_pymatgen_orbit(g, w, xyz):
    from pymatgen.symmetry.groups import SpaceGroup

    ours = expand_orbit(g, w, np.array(xyz, dtype=float))
    theirs = np.array(SpaceGroup.from_int_number(g).get_orbit(xyz))
    assert len(ours) == WyckoffTables.load().mult[g - 1, w] == len(theirs)
    diff = ours[:, None, :] - theirs[None, :, :]
    diff -= np.rint(diff)
    assert np.abs(diff).max(axis=-1).min(axis=1).max() < 1e-6


# ---------------------------------------------------------------------------------------- reference parity
def test_tokens_match_the_reference_on_32_crystals(tokenizer, parity):
    frame, ref = parity
    identical_xyz = 0
    for i, cif in enumerate(frame.cif):
        tokens = tokenizer.encode(cif, name=frame.material_id[i])
        assert tokens.G == ref["G"][i]
        np.testing.assert_array_equal(tokens.W, ref["W"][i])
        np.testing.assert_array_equal(tokens.A, ref["A"][i])
        np.testing.assert_allclose(tokens.L, ref["L"][i], atol=1e-5)
        identical_xyz += np.allclose(tokens.XYZ, ref["XYZ"][i], atol=1e-6)
    assert identical_xyz == len(frame)  # measured: every representative is the reference's


def test_decode_reproduces_the_structure_and_its_space_group(tokenizer, parity):
    frame, ref = parity
    matcher = StructureMatcher()
    for i in range(0, len(frame), 3):
        original = Structure.from_str(frame.cif[i], fmt="cif")
        tokens = CrystalTokens(int(ref["G"][i]), ref["W"][i], ref["A"][i], ref["XYZ"][i], ref["L"][i])
        decoded = tokenizer.decode(tokens)
        assert matcher.fit(decoded, original), frame.material_id[i]
        assert SpacegroupAnalyzer(decoded, symprec=0.01).get_space_group_number() == ref["G"][i]
        assert decoded.num_sites == tokens.num_atoms


def test_round_trip_on_real_mp20_structures(tokenizer, shared):
    frame = pd.read_csv(shared / "data" / "mp20_biternary" / "val.csv.gz").sample(120, random_state=0)
    matcher = StructureMatcher()
    accepted = matched = 0
    for cif in frame.cif:
        try:
            tokens = tokenizer.encode(cif)
        except CrystalTokenizationError:
            continue
        accepted += 1
        matched += matcher.fit(tokenizer.decode(tokens), Structure.from_str(cif, fmt="cif"))
    assert accepted >= 0.97 * len(frame)
    assert matched >= 0.98 * accepted


# ----------------------------------------------------------------------------------------- readable form
def test_string_form_of_the_paper_example():
    text = "225-a-La-0-0-0-c-H-1/4-1/4-1/4-f-H-0.375-0.375-0.375-5.1-5.1-5.1-90-90-90"
    tokens = CrystalTokens.from_string(text)
    assert tokens.to_string() == text
    assert tokens.num_atoms == 4 + 8 + 32
    np.testing.assert_allclose(tokens.L[:3], 5.1 / 44 ** (1 / 3))
    np.testing.assert_allclose(tokens.L[3:], np.pi / 2)
    structure = tokens.to_structure()
    assert structure.composition.reduced_formula == "LaH10"
    assert SpacegroupAnalyzer(structure).get_space_group_number() == 225


def test_string_round_trip_on_real_crystals(tokenizer, parity):
    frame, _ = parity
    for cif in frame.cif[:8]:
        tokens = tokenizer.encode(cif)
        again = CrystalTokens.from_string(tokens.to_string())
        assert again.G == tokens.G and np.array_equal(again.W, tokens.W) and np.array_equal(again.A, tokens.A)
        np.testing.assert_allclose(again.XYZ, tokens.XYZ, atol=1e-6)
        np.testing.assert_allclose(again.L, tokens.L, atol=1e-5)
        assert CrystalTokens.from_dict(tokens.as_dict()) == tokens


@pytest.mark.parametrize(
    "text",
    ["225-a-La", "225-a-La-0-0-0--5-5-5-90-90-90", "999-a-La-0-0-0-1-1-1-90-90-90", "225-a-Qq-0-0-0-5-5-5-90-90-90"],
)
def test_bad_strings_raise_typed_errors(text):
    with pytest.raises(CrystalTokenizationError):
        CrystalTokens.from_string(text).to_structure()


# -------------------------------------------------------------------------------------------- bad input
def test_unparsable_cif(tokenizer):
    with pytest.raises(InvalidStructureError, match="broken.cif.*unparsable CIF"):
        tokenizer.encode("data_x\n_cell_length_a foo\nloop_\n_atom_site_label\n", name="broken.cif")


def test_partial_occupancy(tokenizer):
    disordered = Structure(Lattice.cubic(4.2), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(DisorderedStructureError, match="NaKCl2.*partial occupancy|partial occupancy"):
        tokenizer.encode(disordered, name="NaKCl2")


def test_too_many_sites(shared):
    frame = pd.read_csv(shared / "data" / "mpts52" / "val.csv.gz")
    tokenizer = CrystalTokenizer(n_max=3)
    big = next(cif for cif in frame.cif[:50] if len(Structure.from_str(cif, fmt="cif")) > 20)
    with pytest.raises(TooManySitesError, match="big-one: .* sites; at most 2 fit n_max=3"):
        tokenizer.encode(big, name="big-one")


def test_empty_structure(tokenizer):
    with pytest.raises(EmptyStructureError, match="nothing: the structure has no sites"):
        tokenizer.encode(Structure(Lattice.cubic(3), [], []), name="nothing")


def test_missing_file_and_wrong_type(tokenizer, tmp_path):
    with pytest.raises(InvalidStructureError):
        tokenizer.encode(tmp_path / "nope.cif")
    with pytest.raises(InvalidStructureError, match="int"):
        tokenizer.encode(42)


def test_invalid_tokens_are_refused():
    tokens = CrystalTokens.from_sites(225, [1], [57], [[0, 0, 0]], [1, 1, 1, 1.57, 1.57, 1.57])
    tokens.to_structure()
    for bad in (
        CrystalTokens.from_sites(225, [13], [57], [[0, 0, 0]], tokens.L),  # letter beyond wmax
        CrystalTokens.from_sites(225, [1], [0], [[0, 0, 0]], tokens.L),  # no element
        CrystalTokens.from_sites(225, [1], [57], [[0, 0, 0]], [-1, 1, 1, 1.57, 1.57, 1.57]),
        CrystalTokens.from_sites(225, [1], [57], [[np.nan, 0, 0]], tokens.L),
        CrystalTokens.from_sites(225, [], [], [], tokens.L),
    ):
        with pytest.raises(InvalidTokensError):
            bad.to_structure()


# ---------------------------------------------------------------------------------------------- batches
def test_batch_encode_pads_to_the_longest_crystal_plus_one(tokenizer, parity):
    frame, _ = parity
    cifs = list(frame.cif[:6])
    batch = tokenizer.batch_encode(cifs)
    lengths = [tokenizer.encode(c).num_sites for c in cifs]
    assert batch["W"].shape == (6, max(lengths) + 1)
    assert batch["XYZ"].shape == (6, max(lengths) + 1, 3) and batch["L"].shape == (6, 6)
    assert batch["W"].dtype == torch.long and batch["XYZ"].dtype == torch.float32
    assert (batch["W"][:, -1] == 0).all()  # the lattice read-out site is always padding


def test_batch_encode_skips_and_reports_bad_rows(tokenizer, parity):
    frame, _ = parity
    batch = tokenizer.batch_encode([frame.cif[0], "not a cif\nat all", frame.cif[1]], skip_errors=True)
    assert batch["G"].shape == (2,)
    assert [i for i, _ in batch["errors"]] == [1]
    with pytest.raises(InvalidStructureError):
        tokenizer.batch_encode([frame.cif[0], "not a cif\nat all"])


def test_collator_caps_at_n_max():
    rows = [CrystalTokens.from_sites(1, [1] * 20, [8] * 20, np.random.rand(20, 3), np.ones(6)).as_dict()]
    batch = CrystalCollator(n_max=21, return_tensors="np")(rows)
    assert batch["W"].shape == (1, 21)


class _FirstDraw:
    """A generator whose first draw (the normalizer coset) is fixed; the later ones (representatives) random."""

    def __init__(self, first: int, seed: int = 0):
        self.first, self.rng = first, np.random.default_rng(seed)

    def integers(self, high):
        first, self.first = self.first, None
        return first if first is not None else self.rng.integers(high)


def test_every_equivalent_description_is_the_same_crystal(tokenizer, shared):
    """Each normalizer coset with random representatives, on 60 real MP crystals: StructureMatcher finds the same
    crystal every time, and the descriptions really differ (relabelled Wyckoff positions, moved coordinates)."""
    from crystalformer_rl.tokenization.tokenization_crystalformer import _normalizer_cosets

    frame = pd.read_csv(shared / "data" / "mp20_pilot" / "val.csv.gz").head(60)
    matcher = StructureMatcher()
    described = relabelled = moved = 0
    for cif in frame.cif:
        tokens = tokenizer.encode(cif)
        structure = tokens.to_structure()
        for coset in range(len(_normalizer_cosets(tokens.G)[0])):
            other = random_representatives(tokens, _FirstDraw(coset))
            assert matcher.fit(structure, other.to_structure()), (tokens.to_string(), coset, other.to_string())
            described += 1
            relabelled += not np.array_equal(other.W, tokens.W)
            moved += not np.allclose(other.XYZ, tokens.XYZ)
    assert described > 2 * len(frame) and relabelled > 0.1 * described and moved > 0.5 * described


def test_cscl_relabels_under_the_origin_shift():
    """CsCl (Pm-3m, Cs 1a + Cl 1b) is also Cs 1b + Cl 1a: the shift by (1/2, 1/2, 1/2) swaps the letters, the
    sites re-sort by letter, and a point without freedom has one representative."""
    cscl = CrystalTokens.from_string("221-a-Cs-0-0-0-b-Cl-0.5-0.5-0.5-4.12-4.12-4.12-90-90-90")
    shifted = random_representatives(cscl, _FirstDraw(1))
    assert shifted.to_string().startswith("221-a-Cl-0-0-0-b-Cs-1/2-1/2-1/2")
    assert len(equivalent_representatives(221, 1, [0, 0, 0])) == 1
    assert len(equivalent_representatives(225, 12, [0.11, 0.23, 0.37])) == 192  # Fm-3m general position
    assert len(equivalent_representatives(225, 1, [0.3, 0.3, 0.3])) == 0  # not on the orbit of 4a


def test_collator_redraws_the_description_only_when_asked(tokenizer, shared):
    frame = pd.read_csv(shared / "data" / "mp20_pilot" / "val.csv.gz").head(40)
    rows = [tokenizer.encode(cif).as_dict() for cif in frame.cif]
    plain = CrystalCollator(return_tensors="np")(rows)
    assert all(np.array_equal(plain[k], CrystalCollator(return_tensors="np")(rows)[k]) for k in plain)
    augmented = CrystalCollator(return_tensors="np", random_representatives=True, seed=0)(rows)
    assert np.array_equal(augmented["L"], plain["L"]) and np.array_equal(np.sort(augmented["A"]), np.sort(plain["A"]))
    assert not np.allclose(augmented["XYZ"], plain["XYZ"])


def test_lattice_symmetrisation_by_crystal_system():
    params = [3.0, 4.0, 5.0, 80.0, 85.0, 95.0]
    np.testing.assert_allclose(crystal_system_lattice(2, params), params)
    np.testing.assert_allclose(crystal_system_lattice(14, params), [3, 4, 5, 90, 85, 90])
    np.testing.assert_allclose(crystal_system_lattice(99, params), [3, 3, 5, 90, 90, 90])
    np.testing.assert_allclose(crystal_system_lattice(166, params), [3, 3, 5, 90, 90, 120])
    np.testing.assert_allclose(crystal_system_lattice(225, params), [3, 3, 3, 90, 90, 90])


# -------------------------------------------------------------------------------------------- save/load
def test_save_and_load_from_folder_and_hub_cache(tmp_path, monkeypatch):
    tokenizer = CrystalTokenizer(n_max=17, symprec=0.05)
    tokenizer.save_pretrained(tmp_path / "model")
    loaded = CrystalTokenizer.from_pretrained(tmp_path / "model")
    assert loaded.to_dict() == tokenizer.to_dict()

    # The Hub path, served offline from a pre-filled cache in the layout huggingface_hub writes.
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--crystal-model" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer_config.json").write_text((tmp_path / "model" / "tokenizer_config.json").read_text())
    (cache / "models--someone--crystal-model" / "refs").mkdir()
    (cache / "models--someone--crystal-model" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_hub = CrystalTokenizer.from_pretrained("someone/crystal-model", cache_dir=cache)
    assert from_hub.to_dict() == tokenizer.to_dict()
