"""The MP-20 benchmark's metrics (CDVAE's definitions) on real MP-20 crystals."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from scipy.spatial.distance import cdist

from crystalformer_rl.evaluation.mp20 import (
    COMPOSITION_CUTOFF,
    MP20_TEST_FEATURES,
    STRUCTURE_CUTOFF,
    CrystalFeatures,
    benchmark_metrics,
    coverage,
    featurize,
    load_mp20_test_features,
    scale_composition,
    wasserstein_distances,
)


MP20 = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp20"


@pytest.fixture(scope="module")
def test_cifs():
    return list(pd.read_csv(MP20 / "test.csv.gz", nrows=24).cif)


@pytest.fixture(scope="module")
def features(test_cifs, tmp_path_factory):
    return featurize(test_cifs, num_proc=1, cache_dir=tmp_path_factory.mktemp("fp"), chunk_size=8, progress=False)


def test_fingerprints_of_real_crystals(features):
    assert features.structure_fp.shape == (24, 61) and features.composition_fp.shape == (24, 132)
    assert features.has_fingerprint.all()
    assert features.struct_valid.all()  # MP crystals: no atoms closer than 0.5 Å
    assert 0.7 < features.comp_valid.mean() < 1  # as CDVAE finds, some real crystals fail SMACT
    assert np.all((features.density > 1) & (features.density < 15))


def test_a_set_covers_itself_and_a_crystal_that_did_not_build_counts_in_the_denominator(features):
    assert coverage(features, features) == {"cov_recall": 1.0, "cov_precision": 1.0}
    broken = featurize([None, "not a cif"], num_proc=1, progress=False)
    assert not broken.struct_valid.any() and not broken.comp_valid.any() and not broken.has_fingerprint.any()
    both = CrystalFeatures.concatenate([features, broken])
    assert coverage(both, features)["cov_precision"] == pytest.approx(24 / 26)
    metrics = benchmark_metrics(both, reference=features, n_wasserstein=10)
    assert metrics["struct_valid"] == pytest.approx(100 * 24 / 26)


def test_coverage_in_blocks_equals_cdvae_compute_cov(features):
    """Coverage of one half against the other, computed in blocks of 5, equals CDVAE's formula on the full
    distance matrices (separate structure and composition minima, precision over all generated crystals)."""
    gen = CrystalFeatures(**{k: v[:12] for k, v in features.__dict__.items()})
    ref = CrystalFeatures(**{k: v[12:] for k, v in features.__dict__.items()})
    ds = cdist(gen.structure_fp, ref.structure_fp)
    dc = cdist(scale_composition(gen.composition_fp), scale_composition(ref.composition_fp))
    recall = np.mean((ds.min(0) <= STRUCTURE_CUTOFF) & (dc.min(0) <= COMPOSITION_CUTOFF))
    precision = np.sum((ds.min(1) <= STRUCTURE_CUTOFF) & (dc.min(1) <= COMPOSITION_CUTOFF)) / 12
    got = coverage(gen, ref, block=5)
    assert got == {"cov_recall": pytest.approx(recall), "cov_precision": pytest.approx(precision)}
    assert 0 < recall < 1  # 12 crystals do not cover 12 others: the cutoffs bite


def test_wasserstein_needs_enough_valid_crystals_and_is_seeded(features):
    with pytest.raises(ValueError, match="only"):
        wasserstein_distances(features, features, n_samples=len(features) + 1)
    a = wasserstein_distances(features, features, n_samples=10, seed=1)
    assert a == wasserstein_distances(features, features, n_samples=10, seed=1)
    stretched = featurize([_stretched(c) for c in pd.read_csv(MP20 / "test.csv.gz", nrows=24).cif], 1, progress=False)
    assert wasserstein_distances(stretched, features, n_samples=10)["wdist_density"] > 1


def _stretched(cif):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(cif, fmt="cif")
    structure.scale_lattice(structure.volume * 2)
    return structure


@pytest.fixture(scope="module")
def collapsed():
    """A generated Li2O (the previous default model, seed 0, sample 8732) with coplanar cell vectors (volume 7e-15
    Å^3): it kept pymatgen's compiled neighbour search busy for over an hour, where a signal cannot interrupt it."""
    lattice = Lattice.from_parameters(3.426688, 3.638713, 6.300947, 43.477091, 98.588849, 55.111758)
    coords = [[0.338212, 0.062581, 0.662806], [0.661788, 0.937419, 0.337194]]
    coords += [[0.496821, 0.246301, 0.162639], [0.503179, 0.753699, 0.837361]]
    return Structure(lattice, ["O", "O", "Li", "Li"], coords)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_fingerprint_past_the_time_limit_leaves_the_crystal_without_one(test_cifs, features, collapsed, num_proc):
    """Past the limit the crystal's worker is killed: the crystal gets no fingerprint (as one whose fingerprint
    raises in CDVAE), keeps its validities and density, and is counted; the crystals around it are fingerprinted as
    without a limit."""
    assert collapsed.volume < 1e-10
    crystals = [collapsed, test_cifs[0], collapsed, test_cifs[1]]
    found = featurize(crystals, num_proc=num_proc, progress=False, time_limit=5)
    assert found.timed_out.tolist() == [True, False, True, False]
    assert found.has_fingerprint.tolist() == [False, True, False, True]
    assert np.array_equal(found.structure_fp[[1, 3]], features.structure_fp[:2])
    assert not found.struct_valid[0] and found.n_elements[0] == 2 and found.density[0] > 1e10
    assert benchmark_metrics(found, features, n_wasserstein=1)["fingerprint_timeouts"] == 2
    unlimited = featurize(test_cifs[:2], num_proc=1, progress=False, time_limit=0)  # in this process, no workers
    assert not unlimited.timed_out.any() and np.array_equal(unlimited.structure_fp, features.structure_fp[:2])


def test_a_cache_of_other_crystals_is_refused(test_cifs, tmp_path):
    """As many crystals but other ones (another model's 10,000 samples) must not reuse the fingerprints."""
    featurize(test_cifs[:4], num_proc=1, cache_dir=tmp_path, chunk_size=2, progress=False)
    with pytest.raises(ValueError, match="other crystals"):
        featurize(test_cifs[4:8], num_proc=1, cache_dir=tmp_path, chunk_size=2, progress=False)
    with pytest.raises(ValueError, match="other crystals"):
        featurize(test_cifs[:6], num_proc=1, cache_dir=tmp_path, chunk_size=2, progress=False)


def test_a_cache_made_under_another_time_limit_is_refused(test_cifs, tmp_path):
    """Chunks made under a 120 s limit may lack fingerprints that a rerun without a limit would compute."""
    featurize(test_cifs[:2], num_proc=1, cache_dir=tmp_path, chunk_size=2, progress=False, time_limit=120)
    with pytest.raises(ValueError, match="other settings"):
        featurize(test_cifs[:2], num_proc=1, cache_dir=tmp_path, chunk_size=2, progress=False, time_limit=0)


def test_a_stuck_fingerprint_worker_dies_with_its_parent(collapsed, tmp_path):
    """A benchmark killed by SIGKILL runs no cleanup: its worker, stuck in compiled code on the collapsed cell,
    must not keep a core busy for hours after it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    saved = tmp_path / "collapsed.json"  # a CIF of this cell does not read back
    saved.write_text(collapsed.to_json())
    code = (
        "import sys; from pymatgen.core import Structure; from crystalformer_rl.evaluation.mp20 import featurize; "
        "featurize([Structure.from_file(sys.argv[1])], num_proc=1, progress=False, time_limit=3600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code, str(saved)])
    try:
        deadline = time.monotonic() + 120
        while not (children := psutil.Process(parent.pid).children()) and time.monotonic() < deadline:
            assert parent.poll() is None, "the benchmark process ended before its worker started"
            time.sleep(0.2)
        assert children, "no fingerprint worker started"
        worker = children[0]
        time.sleep(2)  # let it enter the neighbour search
        assert worker.is_running()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        worker.wait(timeout=30)  # raises psutil.TimeoutExpired if the worker outlives its parent
    finally:
        if parent.poll() is None:
            parent.kill()


def test_features_save_and_load(features, tmp_path):
    features.save(tmp_path / "f.npz")
    loaded = CrystalFeatures.load(tmp_path / "f.npz")
    assert np.array_equal(loaded.structure_fp, features.structure_fp)
    assert np.array_equal(loaded.timed_out, features.timed_out) and not loaded.timed_out.any()
    assert np.array_equal(loaded.comp_valid, features.comp_valid)


def test_the_shipped_test_features_are_mp20_test_in_order():
    features = load_mp20_test_features()
    ids = np.load(MP20_TEST_FEATURES)["material_id"]
    assert len(features) == 9046
    assert list(ids) == list(pd.read_csv(MP20 / "test.csv.gz", usecols=["material_id"]).material_id)
    assert features.struct_valid.mean() == 1.0


def test_benchmark_command_on_test_crystals_resumes_and_refuses_a_bad_input(tmp_path, capsys):
    """30 MP-20 test crystals benchmarked against the shipped test features: each is its own nearest neighbour
    (COV-P 100 %); they cover far more than themselves (CDVAE's cutoffs are wide: ~46 %) but not the whole split;
    a rerun keeps the fingerprints."""
    import json

    from crystalformer_rl.commands import main

    frame = pd.read_csv(MP20 / "test.csv.gz", nrows=30, usecols=["material_id", "cif"])
    frame.to_csv(tmp_path / "crystals.csv", index=False)
    flags = ["-o", str(tmp_path / "bench"), "--num_proc", "1", "--wasserstein_samples", "10", "--no_evaluate"]
    assert main(["benchmark", str(tmp_path / "crystals.csv"), *flags, "--no_progress"]) in (None, 0)
    metrics = json.loads((tmp_path / "bench" / "benchmark_mp20.json").read_text())
    assert metrics["struct_valid"] == 100.0 and metrics["cov_precision"] == 100.0
    assert 30 / 9046 * 100 < metrics["cov_recall"] < 90
    chunk = next((tmp_path / "bench" / "fingerprints").glob("chunk-*.npz"))
    stamp = chunk.stat().st_mtime_ns
    assert main(["benchmark", str(tmp_path / "crystals.csv"), *flags, "--no_progress"]) in (None, 0)
    assert chunk.stat().st_mtime_ns == stamp  # resumed: the finished chunk was kept, not recomputed
    capsys.readouterr()
    assert main(["benchmark", str(tmp_path / "missing.csv"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.csv" in err[0]


def test_the_benchmark_judges_compositions_with_cdvaes_smact_data():
    """CDVAE pinned SMACT 2.2.1, whose lists differ from SMACT 4's 2014 lists: La2IrO2 needs Ir(-2), which only
    SMACT 2.2.1 lists (CDVAE's code calls it valid), so the benchmark's rule and the default rule disagree on it."""
    from crystalformer_rl.evaluation.mp20 import OXIDATION_STATES
    from crystalformer_rl.materials.validity import composition_validity

    assert OXIDATION_STATES == "cdvae"
    assert composition_validity("La2IrO2", oxidation_states="cdvae")
    assert not composition_validity("La2IrO2", oxidation_states="smact14")
    assert composition_validity("NaCl", oxidation_states="cdvae") and not composition_validity(
        "NaCl2", oxidation_states="cdvae"
    )
