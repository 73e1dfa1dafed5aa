"""The shipped corpus holds no MP-20 test crystal, by id or by structure; the builder's structure check finds them."""

import warnings
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crystalformer_rl.data.hygiene import matching_test_ids
from crystalformer_rl.tokenization import CrystalTokens


REPO = Path(__file__).resolve().parents[1]
TEST_SAFE_REFERENCE = REPO / "crystalformer_rl" / "data" / "reference" / "mp_corpus_test_safe.csv.gz"
MP20 = REPO.parent / "shared" / "data" / "mp20"


@pytest.fixture(scope="module")
def mp20_test():
    return pd.read_csv(MP20 / "test.csv.gz", usecols=["material_id", "reduced_formula", "cif"])


@pytest.fixture(scope="module")
def corpus():
    return pd.read_csv(TEST_SAFE_REFERENCE)


def _structure(cif):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def test_the_corpus_holds_no_mp20_test_id(corpus, mp20_test):
    assert len(mp20_test) == 9046
    assert not set(corpus["id"]) & set(mp20_test.material_id)


def test_the_corpus_holds_no_mp20_test_structure(corpus, mp20_test):
    """Every corpus crystal that shares a reduced formula with a test crystal is matched against it (~4,700 pairs)."""
    pairs = corpus.merge(mp20_test, on="reduced_formula")
    assert len(pairs) > 4000  # polymorphs of test compositions are in the corpus: the check has work to do
    matcher = StructureMatcher()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matched = [
            (row.id, row.material_id)
            for row in pairs.itertuples()
            if matcher.fit(CrystalTokens.from_string(row.tokens).to_structure(), _structure(row.cif))
        ]
    assert matched == []


def test_the_builder_finds_test_crystals_that_carry_no_mp_id(mp20_test):
    """Test crystals renamed (as an AFLOW copy would be), one in a 2x1x1 supercell with shuffled sites, are found;
    a validation crystal of the same formula as a test crystal is not."""
    test = mp20_test.iloc[:200]
    val = pd.read_csv(MP20 / "val.csv.gz", usecols=["material_id", "reduced_formula", "cif"])
    polymorph = val[val.reduced_formula.isin(set(test.reduced_formula))].iloc[0]
    supercell = _structure(test.cif.iloc[3])
    supercell.make_supercell([2, 1, 1])
    supercell = Structure.from_sites(list(reversed(supercell.sites)))
    cifs = [test.cif.iloc[0], test.cif.iloc[1], supercell.to(fmt="cif"), polymorph.cif]
    found = matching_test_ids(cifs, test.material_id, test.cif, num_proc=1, progress=False)
    assert found[:3] == [test.material_id.iloc[0], test.material_id.iloc[1], test.material_id.iloc[3]]
    assert found[3] is None
