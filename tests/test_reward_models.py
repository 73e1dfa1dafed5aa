"""Tests of crystalformer_rl.reward_models: protocol, robustness, physics sanity of the shipped models."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Composition, Lattice, Structure


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crystalformer_rl.reward_models import (  # noqa: E402
    ASEEnergyModel,
    BandGapReward,
    CrystalReward,
    DielectricReward,
    EhullReward,
    EnergyScaleMismatchError,
    Failure,
    FigureOfMeritReward,
    MACEEnergyModel,
    MatterSimEnergyModel,
    ModelUnavailableError,
    OrbEnergyModel,
    ProductReward,
    ReferenceHull,
    StabilityReward,
    ThresholdReward,
    WeightedSumReward,
    as_structure,
    check_structure,
    mp2020_corrected_energies,
    relax_structure,
    structure_fingerprint,
)
from tests.helpers.stand_ins import Tokens


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# ----------------------------------------------------------------------------------------------- structures
def rocksalt(a: str = "Na", b: str = "Cl", lattice: float = 5.69) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def fcc(el: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [el], [[0, 0, 0]]).get_primitive_structure()


def silicon() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.47), ["Si"], [[0, 0, 0]]).get_primitive_structure()


def bcc_fe() -> Structure:
    return Structure(Lattice.cubic(2.83), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def overlapping() -> Structure:
    return Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])


class ConstantCalculator(Calculator):
    """ASE calculator returning a fixed energy per atom (NaN / huge values to test failure paths)."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, energy_per_atom: float) -> None:
        super().__init__()
        self.energy_per_atom = energy_per_atom

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": self.energy_per_atom * n, "forces": np.zeros((n, 3)), "stress": np.zeros(6)}


def toy_hull(scale: str = "toy") -> ReferenceHull:
    """A Cu-Al hull on EMT energies: the elements and one compound."""
    emt = ASEEnergyModel(EMT(), energy_scale=scale)
    cu, al = fcc("Cu", 3.61), fcc("Al", 4.05)
    e_cu, e_al = emt.predict_energies([cu, al])
    entries = [
        PDEntry(Composition("Cu"), e_cu),
        PDEntry(Composition("Al"), e_al),
        PDEntry(Composition("CuAl"), e_cu + e_al - 0.2),
    ]
    return ReferenceHull.from_entries(entries, energy_scale=scale, name="toy")


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ehull() -> EhullReward:
    return EhullReward()


@pytest.fixture(scope="module")
def band_gap() -> BandGapReward:
    return BandGapReward()


@pytest.fixture(scope="module")
def dielectric(band_gap: BandGapReward) -> DielectricReward:
    return DielectricReward(band_gap=band_gap)


# ----------------------------------------------------------------------------------------------- base
def test_as_structure_accepts_completion_forms():
    s = rocksalt()
    assert as_structure(s) is s
    assert as_structure({"structure": s}) is s
    assert as_structure(Tokens(s)) is s
    assert as_structure(s.as_dict()) == s
    with pytest.raises(ValueError, match="'NaCl': no such file"):  # InvalidStructureError, from the one converter
        as_structure("NaCl")


def test_check_structure_reasons():
    assert check_structure(rocksalt()) is None
    assert "empty" in check_structure(Structure(Lattice.cubic(3), [], []))
    assert "overlapping" in check_structure(overlapping())
    bad = Structure(Lattice.cubic(4.0), ["Na"], [[0, 0, 0]])
    bad.replace(0, "Na", coords=[np.nan, 0, 0])
    assert "non-finite" in check_structure(bad)
    assert "not supported" in check_structure(rocksalt(), elements={"Na"})


def test_fingerprint_ignores_site_order_and_wrapping():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    t = Structure(Lattice.cubic(4.0), ["Cl", "Na"], [[0.5, 0.5, 0.5], [1.0, 0, 0]])
    assert structure_fingerprint(s) == structure_fingerprint(t)
    u = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.45]])
    assert structure_fingerprint(s) != structure_fingerprint(u)


class Volume(CrystalReward):
    name = "volume"

    def _compute_batch(self, structures):
        if any(len(s) == 3 for s in structures):
            raise RuntimeError("three atoms break the batch")
        return [s.volume / len(s) for s in structures]


def test_trl_protocol_cache_failures_and_logging(caplog):
    r = Volume()
    metrics = {}
    good = rocksalt()
    three = Structure(Lattice.cubic(5), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]])
    completions = [
        good,
        {"structure": good},
        Tokens(None),
        Tokens(overlapping()),
        three,
        Structure(Lattice.cubic(3), [], []),
    ]
    with caplog.at_level(logging.INFO, logger="crystalformer_rl.materials.property"):
        out = r(
            prompts=["225"] * 6,
            completions=completions,
            completion_ids=[[0]] * 6,
            trainer_state=None,
            log_metric=metrics.__setitem__,
        )
    assert len(out) == 6
    assert out[0] == pytest.approx(good.volume / 2) and out[1] == out[0]
    assert out[2:] == [None, None, None, None]
    reasons = r.last_stats.reasons
    assert (
        "could not build" in reasons[2]
        and "overlapping" in reasons[3]
        and "three atoms" in reasons[4]
        and "empty" in reasons[5]
    )
    assert {"volume/seconds", "volume/failed_fraction", "volume/cached_fraction"} <= set(metrics)
    assert any("volume: 6 structures" in rec.message for rec in caplog.records)
    assert r.last_stats.n_computed == 2  # identical structures computed once, the broken batch isolated
    r(completions=[good])
    assert r.last_stats.n_cached == 1 and r.last_stats.n_computed == 0
    assert Volume(failure_reward=-5.0)(completions=[Tokens(None)]) == [-5.0]


# ----------------------------------------------------------------------------------------------- energies / hull
def test_ase_calculator_toy_hull_and_relaxation():
    hull = toy_hull()
    reward = EhullReward(EMT(), hull=hull, energy_scale="toy")
    cu = fcc("Cu", 3.61)
    assert reward.compute([cu])[0] == pytest.approx(0.0, abs=1e-6)
    cual = Structure(Lattice.cubic(2.95), ["Cu", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    value = reward.compute([cual])[0]
    assert value is not None and value > -1
    assert reward(completions=[cual]) == [pytest.approx(-value)]
    strained = fcc("Cu", 3.75)
    res = relax_structure(strained, EMT(), fmax=0.02, steps=200)
    assert res.converged and res.energy < ASEEnergyModel(EMT(), "toy").predict_energies([strained])[0]
    relaxed = EhullReward(EMT(), hull=hull, energy_scale="toy", relax=True, fmax=0.02)
    assert relaxed.compute([strained])[0] == pytest.approx(0.0, abs=2e-3)
    assert len(relaxed.relaxed) == 1
    relaxed.compute([fcc("Cu", 3.70)])  # `relaxed` holds the last call's relaxations only, not every one so far
    assert len(relaxed.relaxed) == 1


def _emt_structures():
    """Real MP crystals EMT can score (Cu, Al, Ni, Ag, Au, Pd, Pt), strained and rattled away from equilibrium."""
    import pandas as pd

    wanted = {"mp-12802", "mp-1229031", "mp-1487", "mp-522", "mp-16514"}
    frames = [pd.read_csv(SHARED / "data" / "mp20_pilot" / f"{split}.csv.gz") for split in ("train", "val")]
    rows = pd.concat(frames).drop_duplicates("material_id").set_index("material_id").loc[sorted(wanted)]
    out = []
    for seed, cif in enumerate(rows.cif):
        s = Structure.from_str(cif, fmt="cif")
        s.scale_lattice(s.volume * 1.06)
        s.perturb(0.08, min_distance=0.02, seed=seed)
        out.append(s)
    return out


def _ase_fire(structure, calculator, fmax, steps):
    """ASE's own FIRE on a FrechetCellFilter, run one structure at a time: the reference the package's lockstep
    relaxation must reproduce (the package itself sets up FIRE only in `materials.relaxation.relax_in_lockstep`)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    from crystalformer_rl.materials import RelaxResult

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calculator
    optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
    converged = bool(optimizer.run(fmax=fmax, steps=steps))
    return RelaxResult(
        AseAtomsAdaptor.get_structure(atoms), float(atoms.get_potential_energy()), converged, optimizer.nsteps
    )


def test_lockstep_relaxation_equals_one_by_one_ase_fire():
    """Lockstep relaxation (one batched force call per step) follows each structure's own FIRE trajectory:
    the same step counts, convergence and energies as FIRE(FrechetCellFilter).run one structure at a time."""
    from crystalformer_rl.materials.relaxation import relax_in_lockstep

    structures = _emt_structures()
    model = ASEEnergyModel(EMT(), "toy")
    calls, done = [], []

    def predict_efs(batch):
        calls.append(len(batch))
        return model.predict_efs(batch)

    batched = relax_in_lockstep(structures, predict_efs, fmax=0.05, steps=150, on_done=done.append)
    one = [_ase_fire(s, EMT(), fmax=0.05, steps=150) for s in structures]
    assert sorted(done) == list(range(len(structures)))
    assert calls[0] == len(structures) and max(calls[1:]) <= len(structures)
    assert len(calls) == 1 + max(r.steps for r in batched)  # one batched call per step, not one per structure
    for b, o, s in zip(batched, one, structures):
        assert (b.steps, b.converged) == (o.steps, o.converged)
        assert abs(b.energy - o.energy) / len(s) < 1e-8
        np.testing.assert_allclose(b.structure.lattice.matrix, o.structure.lattice.matrix, atol=1e-8)


def test_lockstep_relaxation_isolates_a_failing_structure(caplog):
    """A structure whose evaluation raises (or gives NaN) fails alone; the others still relax."""
    from crystalformer_rl.materials.relaxation import relax_in_lockstep

    structures = _emt_structures()
    model = ASEEnergyModel(EMT(), "toy")
    bad = structures[1].composition

    def predict_efs(batch):
        if any(s.composition == bad for s in batch):
            if len(batch) == 1:
                raise RuntimeError("graph conversion failed")
            raise RuntimeError("batch failed")
        return model.predict_efs(batch)

    results = relax_in_lockstep(structures, predict_efs, fmax=0.05, steps=100)
    assert isinstance(results[1], RuntimeError) and "graph conversion" in str(results[1])
    assert all(r.converged for i, r in enumerate(results) if i != 1)


def test_a_batched_relaxation_that_raises_as_a_whole_costs_only_the_failing_crystal(caplog):
    """A batched ``relax_fn`` whose call raises for the whole chunk (not inside its lockstep) is retried crystal by
    crystal: only the crystal that makes it raise fails, and `evaluate --relax` writes the others as relaxed."""
    from crystalformer_rl.materials.relaxation import relax_in_chunks

    structures = _emt_structures()
    model = ASEEnergyModel(EMT(), "toy")
    bad = structures[1].composition
    calls = []

    def relax_fn(batch, on_done=None):
        calls.append(len(batch))
        if any(s.composition == bad for s in batch):
            raise MemoryError("graph of the batch too large")
        return [(r.structure, r.energy) for r in model.relax_many(batch, fmax=0.05, steps=100, on_done=on_done)]

    relax_fn.batched = True
    [(chunk, outcomes)] = list(relax_in_chunks(structures, range(len(structures)), relax_fn, progress=False))
    assert calls == [len(structures)] + [1] * len(structures)
    assert "MemoryError" in outcomes[1].reason and outcomes[1].structure is None
    assert all(o.structure is not None and o.reason is None for i, o in enumerate(outcomes) if i != 1)
    assert "relaxing them one by one" in caplog.text


def test_primitive_relaxation_relaxes_fewer_atoms_to_the_same_energy_per_atom():
    """``relax_structures(primitive=True)`` gives the relaxer each centred crystal's primitive cell (real MP crystals in
    their conventional cells, strained: R3m AgPd2Au 12 -> 4 atoms, Cmmm Al3Ni5 16 -> 8) and reaches the relaxed
    energy per atom of the conventional cell; a rattled cell, its centring broken, is not reduced."""
    import pandas as pd
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from crystalformer_rl.materials.relaxation import primitive_cell, relax_structures

    frames = [pd.read_csv(SHARED / "data" / "mp20_pilot" / f"{split}.csv.gz") for split in ("train", "val")]
    rows = pd.concat(frames).drop_duplicates("material_id").set_index("material_id").loc[["mp-1229031", "mp-16514"]]
    conventional = []
    for cif in rows.cif:
        cell = SpacegroupAnalyzer(Structure.from_str(cif, fmt="cif")).get_conventional_standard_structure()
        cell.scale_lattice(cell.volume * 1.06)
        conventional.append(cell)
    model, sizes = ASEEnergyModel(EMT(), "toy"), []

    def relax_fn(structures, on_done=None):
        sizes.extend(len(s) for s in structures)
        return [(r.structure, r.energy) for r in model.relax_many(structures, fmax=0.02, steps=300, on_done=on_done)]

    relax_fn.batched = True
    primitive, e_primitive, _ = relax_structures(conventional, relax_fn, progress=False, primitive=True)
    assert sizes == [4, 8]
    sizes.clear()
    full, e_full, _ = relax_structures(conventional, relax_fn, progress=False)
    assert sizes == [12, 16]
    for a, b, e_a, e_b in zip(primitive, full, e_primitive, e_full):
        assert abs(e_a / len(a) - e_b / len(b)) < 1e-3
        assert StructureMatcher().fit(a, b)
    rattled = conventional[1].copy()
    rattled.perturb(0.05, seed=0)
    assert len(primitive_cell(rattled)) == 16


def test_scale_mismatch_is_refused():
    with pytest.raises(EnergyScaleMismatchError, match="toy"):
        EhullReward(ASEEnergyModel(EMT(), "gga"), hull=toy_hull("toy"))
    with pytest.raises(EnergyScaleMismatchError, match="r2scan"):
        EhullReward(ASEEnergyModel(EMT(), "matpes_pbe"), hull=ReferenceHull.default())
    with pytest.raises(ValueError, match="energy_scale"):
        EhullReward(EMT(), hull=toy_hull())


def test_nan_and_exploding_energies_give_none():
    hull = toy_hull()
    cu = [fcc("Cu", 3.61)]
    nan = EhullReward(ConstantCalculator(float("nan")), hull=hull, energy_scale="toy")
    assert nan.compute(cu) == [None] and "non-finite" in nan.last_stats.reasons[0]
    boom = EhullReward(ConstantCalculator(1e6), hull=hull, energy_scale="toy")
    assert boom(completions=cu) == [None] and "exploding" in boom.last_stats.reasons[0]
    hole = EhullReward(ConstantCalculator(-50.0), hull=hull, energy_scale="toy")
    assert hole.compute(cu) == [None] and "implausible" in hole.last_stats.reasons[0]


def test_elements_outside_hull_or_without_mp2020_data():
    hull = toy_hull()
    reward = EhullReward(EMT(), hull=hull, energy_scale="toy")
    assert reward.compute([rocksalt()]) == [None] and "not supported" in reward.last_stats.reasons[0]
    po = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])
    assert "no MP2020" in mp2020_corrected_energies([po], [-4.0])[0]
    gga_hull = ReferenceHull.from_entries(
        [PDEntry(Composition("Po"), -4.0), PDEntry(Composition("Cu"), -3.7)], "gga_mp2020"
    )
    gga = EhullReward(ConstantCalculator(-4.0), hull=gga_hull, energy_scale="gga")
    assert gga.apply_mp2020
    assert gga.compute([po]) == [None] and "MP2020" in gga.last_stats.reasons[0]


def test_mp2020_correction_matches_pymatgen_oxide_correction():
    mgo = rocksalt("Mg", "O", 4.21)
    corrected = mp2020_corrected_energies([mgo], [-12.0])[0]
    assert corrected == pytest.approx(-12.0 - 0.687, abs=1e-3)  # MP2020 oxide correction, one O per cell
    fe2o3_like = Structure(Lattice.cubic(4.0), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert mp2020_corrected_energies([fe2o3_like], [-10.0])[0] < -10.0 - 0.687  # + Fe GGA+U mixing correction


def test_default_hull_references_and_scales():
    hull = ReferenceHull.default()
    assert set(hull.energy_scales) == {"r2scan", "gga_mp2020"}
    assert hull.references["r2scan"]["Si"] == pytest.approx(-8.77, abs=0.01)
    assert "Fe" in hull.elements and "Fe" not in hull.elements_for("r2scan")
    assert hull.preferred_scale(Composition("NaCl")) == "r2scan"
    assert hull.preferred_scale(Composition("Fe2O3")) == "gga_mp2020"
    assert hull.preferred_scale(Composition("Yb2O3")) is None
    assert hull.e_above_hull("Si2", hull.references["r2scan"]["Si"] * 2, scale="r2scan") == pytest.approx(
        0.0, abs=1e-9
    )
    data = Path(__file__).resolve().parents[1] / "crystalformer_rl" / "materials" / "data"
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    assert size < 10e6


def test_fast_hull_energy_matches_pymatgen_phase_diagram():
    hull = ReferenceHull.default()
    rng = np.random.default_rng(0)
    for syms in [
        ["Li", "Fe", "P", "O"],
        ["Na", "Cl"],
        ["Ti", "Al", "Pd"],
        ["Si"],
        ["Mn", "O", "F"],
        ["Cu", "Zn", "Sn", "S"],
    ]:
        for _ in range(4):
            comp = Composition(dict(zip(syms, rng.integers(1, 7, len(syms)).tolist())))
            fast = hull.hull_formation_energy_per_atom(comp)
            assert fast == pytest.approx(hull.phase_diagram(comp.elements).get_hull_energy_per_atom(comp), abs=1e-8)


def test_hull_from_files(tmp_path):
    csv = tmp_path / "hull.csv"
    csv.write_text("material_id,composition,energy_total_eV\na,Cu1,-3.7\nb,Al1,-3.7\nc,Cu1Al1,-7.8\n")
    hull = ReferenceHull.from_file(csv, energy_scale="gga_mp2020")
    assert hull.e_above_hull("CuAl", -7.8) == pytest.approx(0.0)
    assert hull.e_above_hull("Cu3Al", -3.7 * 4) > 0
    refs = SHARED / "data" / "mp_hull" / "mp_elemental_reference_entries.json.gz"
    if refs.exists():
        el_hull = ReferenceHull.from_file(refs, energy_scale="gga_mp2020")
        assert len(el_hull.elements) == 89


def test_optional_adapters_raise_clear_errors():
    for cls, pkg in [(OrbEnergyModel, "orb_models"), (MACEEnergyModel, "mace"), (MatterSimEnergyModel, "mattersim")]:
        if importlib.util.find_spec(pkg) is not None:
            continue  # installed: the error path would be the (offline) weight download
        with pytest.raises(ModelUnavailableError, match="pip install"):
            cls()


@pytest.mark.skipif(importlib.util.find_spec("sevenn") is None, reason="sevenn not installed")
def test_sevennet_batched_matches_ase():
    from crystalformer_rl.reward_models import SevenNetEnergyModel

    model = SevenNetEnergyModel("7net-0")
    structures = [rocksalt(), silicon()]
    batched = model.predict_energies(structures)
    single = ASEEnergyModel(model.ase_calculator(), "gga").predict_energies(structures)
    assert batched == pytest.approx(single, abs=1e-3)
    assert model.energy_scale == "gga"


def test_matgl_potential_batched_matches_ase():
    folder = SHARED / "models" / "matgl" / "M3GNet-MP-2021.2.8-PES"
    if not folder.exists():
        pytest.skip("shared matgl models missing")
    from crystalformer_rl.reward_models import MatGLEnergyModel

    model = MatGLEnergyModel(folder)
    structures = [rocksalt(), silicon()]
    batched = model.predict_energies(structures)
    single = ASEEnergyModel(model.ase_calculator(), "gga").predict_energies(structures)
    assert batched == pytest.approx(single, abs=1e-3)
    assert model.energy_scale == "gga"


def test_loading_chgnet_keeps_stdout_clean_for_json_printing_benchmarks(capsys):
    """CHGNet prints its parameter count and device; benchmarks print JSON on stdout, so that goes to stderr."""
    from crystalformer_rl.materials.potentials import CHGNetEnergyModel, _load_chgnet

    model = _load_chgnet.__wrapped__("r2scan", "cpu")  # uncached: the load itself must not print to stdout
    CHGNetEnergyModel("r2scan").ase_calculator()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "initialized" in captured.err
    assert model.version == "r2scan"


# ----------------------------------------------------------------------------------------------- default E_hull (CHGNet)
def test_default_ehull_on_known_stable_crystals(ehull):
    values = ehull.compute([rocksalt(), silicon(), bcc_fe()])
    assert all(v is not None for v in values), ehull.last_stats.reasons
    nacl, si, fe = values
    assert -0.15 < nacl < 0.15 and -0.15 < si < 0.15 and -0.15 < fe < 0.15
    assert ehull.fallback is not None and ehull.fallback_scale == "gga_mp2020"
    rewards = ehull(prompts=None, completions=[rocksalt(), overlapping(), Tokens(None)], completion_ids=None)
    assert rewards[0] == pytest.approx(-nacl) and rewards[1] is None and rewards[2] is None
    assert ehull.last_stats.n_cached == 1


def test_default_ehull_robustness(ehull):
    yb = rocksalt("Yb", "O", 4.8)
    empty = Structure(Lattice.cubic(3), [], [])
    nan_cell = rocksalt()
    nan_cell.replace(0, "Na", coords=[np.nan, 0, 0])
    out = ehull(completions=[yb, empty, nan_cell, overlapping(), {"no": "structure"}])
    assert out == [None] * 5
    assert all(isinstance(r, str) and r for r in ehull.last_stats.reasons)


def test_default_ehull_on_mp_rows(ehull):
    import pandas as pd

    path = SHARED / "data" / "mp20_biternary" / "test.csv.gz"
    if not path.exists():
        pytest.skip("shared data missing")
    df = pd.read_csv(path).sample(12, random_state=3)
    structures = [Structure.from_str(c, fmt="cif") for c in df["cif"]]
    values = ehull.compute(structures)
    err = [abs(v - y) for v, y in zip(values, df["e_above_hull"]) if v is not None]
    assert len(err) >= 10 and np.median(err) < 0.1


# ----------------------------------------------------------------------------------------------- properties
def test_band_gap_nacl_si_and_batching(band_gap):
    nacl, si = band_gap.compute([rocksalt(), silicon()])
    assert 4.5 < nacl < 5.5  # MP (PBE) NaCl: 5.0 eV
    assert 0.0 <= si < 1.5
    single = BandGapReward(batch_size=1).compute([rocksalt()])[0]
    assert single == pytest.approx(nacl, abs=1e-4)
    matgl_src = BandGapReward(message_aggregation="src").compute([rocksalt()])[0]
    assert matgl_src < nacl  # matgl 4's own convention underestimates the gap


def test_dielectric_and_figure_of_merit(dielectric, band_gap):
    eps = dielectric.compute([rocksalt(), silicon()])
    assert 1.5 < eps[0] < 5.0  # DFPT NaCl ε∞ ≈ 2.4
    assert eps[1] is None or eps[1] > eps[0]  # a small-gap semiconductor screens more
    meta = json.loads(
        (
            Path(__file__).resolve().parents[1] / "crystalformer_rl/materials/data/dielectric_model/config.json"
        ).read_text()
    )
    assert "Petousis" in meta["citation"]
    fom = FigureOfMeritReward(dielectric=dielectric)
    value = fom.compute([rocksalt()])[0]
    assert value == pytest.approx(eps[0] * band_gap.compute([rocksalt()])[0], rel=1e-6)
    assert fom(completions=[rocksalt(), overlapping()]) == [pytest.approx(value), None]
    assert fom.__name__ == "dielectric_fom"


def test_uncertainty_aware_figure_of_merit(dielectric, band_gap):
    """FoM on mean − k·std of the dielectric ensemble (log space): by hand from the members; k = 0 is the old FoM."""
    import torch

    structures = [rocksalt(), rocksalt("K", "Cl", 6.29), rocksalt("Mg", "O", 4.21), rocksalt("Li", "F", 4.03)]
    k = 1.5
    gaps = band_gap.compute(structures)
    assert all(g is not None and g > 0 for g in gaps)
    x = torch.as_tensor(dielectric.featurizer(structures, gaps=gaps), device=dielectric.device)
    with torch.no_grad():
        members = np.stack(
            [dielectric.model(x, member=m).double().cpu().numpy() for m in range(dielectric.model.n_members)]
        )
        old_eps = torch.exp(dielectric.model(x)).cpu().numpy()  # the reward's formula before the option existed
    mu, sigma = members.mean(0), members.std(0)  # population std (ddof 0)
    assert np.all(sigma > 0)  # the members disagree, so the penalty changes something
    gap = np.asarray(gaps, dtype=float)

    aware = FigureOfMeritReward(dielectric=DielectricReward(band_gap=band_gap, uncertainty_penalty=k))
    assert aware.dielectric.uncertainty_penalty == k and aware.__name__ == "dielectric_fom"
    assert aware.compute(structures) == pytest.approx((gap * np.exp(mu - k * sigma)).tolist(), rel=1e-5)
    assert aware.dielectric.compute(structures) == pytest.approx(np.exp(mu - k * sigma).tolist(), rel=1e-5)

    plain = FigureOfMeritReward(dielectric=DielectricReward(band_gap=band_gap))  # default k = 0
    zero = FigureOfMeritReward(dielectric=DielectricReward(band_gap=band_gap, uncertainty_penalty=0.0))
    assert plain.dielectric.uncertainty_penalty == 0.0
    assert zero.compute(structures) == plain.compute(structures)  # the same code path, exactly
    assert plain.compute(structures) == pytest.approx((old_eps * gap).tolist(), rel=1e-6)
    assert plain.compute(structures) == pytest.approx((np.exp(mu) * gap).tolist(), rel=1e-5)
    assert all(a < p for a, p in zip(aware.compute(structures), plain.compute(structures)))

    rows = dielectric.member_log_predictions(structures + [overlapping()])
    assert rows[-1] is None
    assert np.allclose(np.stack(rows[:-1], axis=1), members, rtol=1e-5, atol=1e-6)

    assert FigureOfMeritReward(band_gap=band_gap, uncertainty_penalty=k).dielectric.uncertainty_penalty == k
    with pytest.raises(ValueError):
        FigureOfMeritReward(dielectric=aware.dielectric, uncertainty_penalty=0.0)  # contradicts the given model
    with pytest.raises(ValueError):
        DielectricReward(band_gap=band_gap, uncertainty_penalty=-1.0)


def test_combinations():
    a, b = Volume(), Volume()
    s = [rocksalt()]
    v = a.compute(s)[0]
    assert ProductReward([a, b]).compute(s)[0] == pytest.approx(v * v)
    assert WeightedSumReward([a, b], [0.5, 2.0])(completions=s) == [pytest.approx(2.5 * v)]
    assert ThresholdReward(a, threshold=v + 1)(completions=s) == [1.0]
    assert ThresholdReward(a, threshold=v + 1, below=False).compute(s) == [0.0]
    assert WeightedSumReward([a, b]).compute([Tokens(None)]) == [None]
    hull = toy_hull()
    stable = StabilityReward(EhullReward(EMT(), hull=hull, energy_scale="toy"))
    assert stable(completions=[fcc("Cu", 3.61), fcc("Cu", 3.2)]) == [1.0, 0.0]
    assert stable.__name__ == "stable" and not math.isnan(stable.compute([fcc("Cu", 3.61)])[0])


def test_failure_is_a_plain_reason():
    f = Failure("x")
    assert str(f) == "x"


def test_linear_program_hull_matches_qhull_and_handles_many_elements():
    """Systems above four elements use a linear program (qhull is exponential in the dimension)."""
    import time

    from pymatgen.core import Composition

    from crystalformer_rl.materials.hull import _default_hull, _LinearProgramHull, _LowerHull

    hull = _default_hull()
    for formula in ("LiFePO4", "Li2MnNiO4", "BaTiO3"):
        comp = Composition(formula)
        elements = sorted(el.symbol for el in comp.elements)
        entries = hull._system_entries(frozenset(elements))
        assert _LinearProgramHull(elements, entries).energy(comp) == pytest.approx(
            _LowerHull(elements, entries).energy(comp), abs=1e-8
        )
    start = time.perf_counter()
    energy = hull.hull_formation_energy_per_atom(Composition("LiNaKRbCsFClBrIO2"))
    assert energy < 0 and time.perf_counter() - start < 5


@pytest.mark.parametrize("name", ["r2scan", "0.3.0"])
def test_chgnet_batched_efs_equals_chgnets_own_prediction(name):
    """The inference path (one first-order backward pass) gives CHGNet's own energies, forces and stresses."""
    import pandas as pd
    from ase import units

    from crystalformer_rl.reward_models import CHGNetEnergyModel

    rows = pd.read_csv(SHARED / "data" / "mp20_biternary" / "test.csv.gz").sample(6, random_state=5)
    structures = [Structure.from_str(c, fmt="cif") for c in rows["cif"]]
    for s in structures[::2]:  # away from equilibrium, so forces and stresses are not ~0
        s.perturb(0.1, min_distance=0.05, seed=1)
        s.scale_lattice(s.volume * 1.05)
    model = CHGNetEnergyModel(name, batch_size=4)  # two batches: the batch boundary is exercised too
    ours = model.predict_efs(structures)
    theirs = model.model.predict_structure(structures, task="efs", batch_size=4)
    scale = (lambda s: len(s)) if model.model.is_intensive else (lambda s: 1)
    for (energy, forces, stress), ref, s in zip(ours, theirs, structures):
        assert energy == pytest.approx(float(np.asarray(ref["e"]).reshape(-1)[0]) * scale(s), abs=1e-4 * len(s))
        np.testing.assert_allclose(forces, ref["f"], atol=2e-3)
        np.testing.assert_allclose(stress, np.asarray(ref["s"]) * units.GPa, atol=1e-4)
    assert max(np.abs(f).max() for _, f, _ in ours) > 0.05  # the check compared real forces


def test_a_reward_clip_range_floors_one_term_and_leaves_the_physical_value_alone():
    """E_hull clipped at 0: a crystal the potential puts below the hull gets no credit for it (the error the
    figure-of-merit + E_hull run exploited); the physical value stays unclipped and failures keep failure_reward."""
    emt = ASEEnergyModel(EMT(), energy_scale="toy")
    cu = fcc("Cu", 3.61)
    (e_cu,) = emt.predict_energies([cu])
    hull = ReferenceHull.from_entries([PDEntry(Composition("Cu"), e_cu + 0.5)], energy_scale="toy", name="shifted")
    plain = EhullReward(EMT(), hull=hull, energy_scale="toy")
    assert plain.compute([cu])[0] == pytest.approx(-0.5, abs=1e-6)
    assert plain(completions=[cu]) == [pytest.approx(0.5, abs=1e-6)]
    floored = EhullReward(EMT(), hull=hull, energy_scale="toy", reward_clip_range=(-1.0, 0.0), failure_reward=-3.0)
    squeezed = fcc("Cu", 3.0)
    assert floored.compute([squeezed])[0] > 1.0
    assert floored(completions=[cu, squeezed, Tokens(None)]) == [0.0, -1.0, -3.0]
    assert floored.compute([cu]) == plain.compute([cu])
    with pytest.raises(ValueError, match="volume: reward_clip_range .* min > max"):
        Volume(reward_clip_range=(1.0, 0.0))


def test_stable_figure_of_merit_scores_only_stable_crystals(dielectric, band_gap, ehull):
    """FoM if CHGNet E_hull < 0.1 eV/atom, else 0: NaCl near its MP ground state keeps its FoM, the same cell
    stretched 20 % (far above the hull, a larger ε·E_g is no excuse) scores 0; an unscorable crystal is None."""
    from crystalformer_rl.commands.train import load_reward
    from crystalformer_rl.reward_models import StableFigureOfMeritReward

    nacl, stretched = rocksalt(), rocksalt(lattice=5.69 * 1.2)
    e_hull = ehull.compute([nacl, stretched])
    assert e_hull[0] < 0.1 < e_hull[1]
    fom = FigureOfMeritReward(dielectric=dielectric)
    gated = StableFigureOfMeritReward(figure_of_merit=fom, stability=StabilityReward(ehull))
    plain, unstable = fom.compute([nacl, stretched])
    assert plain > 0 and unstable > 0  # the gate, not the FoM, gives the stretched cell its 0
    assert gated(completions=[nacl, stretched, overlapping()]) == [pytest.approx(plain), 0.0, None]
    assert gated.__name__ == "stable_fom"
    with pytest.raises(ValueError, match="threshold=0.05 contradicts"):
        StableFigureOfMeritReward(figure_of_merit=fom, stability=StabilityReward(ehull), threshold=0.05)
    with pytest.raises(ValueError, match="uncertainty_penalty=1.0 contradicts"):
        StableFigureOfMeritReward(figure_of_merit=fom, stability=StabilityReward(ehull), uncertainty_penalty=1.0)
    assert isinstance(
        load_reward("stable_figure_of_merit", stability=StabilityReward(ehull), figure_of_merit=fom),
        StableFigureOfMeritReward,
    )


def test_rewards_that_compute_the_same_e_hull_share_one_cache():
    """The gated FoM's stability test and a clipped E_hull term ask the same potential the same question: after
    share_caches the second is served from the first's cache, with its own clip and failure reward; a reward whose
    values differ (another plausibility window) keeps its own cache."""
    from crystalformer_rl.reward_models import iter_rewards, share_caches

    emt, hull = EMT(), toy_hull()
    cu, squeezed = fcc("Cu", 3.61), fcc("Cu", 3.0)
    gate = StabilityReward(EhullReward(emt, hull=hull, energy_scale="toy"))
    term = EhullReward(emt, hull=hull, energy_scale="toy", reward_clip_range=(-1.0, 0.0), failure_reward=-3.0)
    narrow = EhullReward(emt, hull=hull, energy_scale="toy", ehull_range=(-1.0, 0.5))
    other_calculator = EhullReward(EMT(), hull=hull, energy_scale="toy")
    rewards = [gate, term, narrow, other_calculator]
    assert gate.children[0] in list(iter_rewards(rewards))
    assert share_caches(rewards) == [(term, gate.children[0])]
    assert term._cache is gate.children[0]._cache and narrow._cache is not term._cache
    assert other_calculator._cache is not term._cache  # an object given twice would be the same spec; two are not

    assert gate(completions=[cu, squeezed]) == [1.0, 0.0]
    assert term(completions=[cu, squeezed, Tokens(None)]) == [0.0, -1.0, -3.0]
    assert term.last_stats.n_cached == 2 and term.last_stats.n_computed == 0
    assert narrow.compute([squeezed]) == [None]  # its own window: E_hull > 0.5 is a failure there, not here
    with pytest.raises(ValueError, match="cannot share a cache"):
        narrow.share_with(term)


def test_the_gated_figure_of_merit_and_its_e_hull_term_run_chgnet_once(ehull):
    """The rewards of configs/rl_dielectric_stable_fom.yaml's E_hull side, built from specs as `rl` builds them:
    one cache and one copy of CHGNet between them."""
    from crystalformer_rl.reward_models import share_caches

    term = EhullReward(reward_clip_range=(-10.0, 0.0), failure_reward=-10.0)
    assert term.calculator is not ehull.calculator
    assert share_caches([StabilityReward(ehull), term]) == [(term, ehull)]
    assert term.calculator is ehull.calculator and term.fallback is ehull.fallback
    nacl = rocksalt()
    (value,) = ehull.compute([nacl])
    assert term(completions=[nacl]) == [pytest.approx(min(max(-value, -10.0), 0.0))]
    assert term.last_stats.n_cached == 1
