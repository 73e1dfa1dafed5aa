"""Evaluation: validity, uniqueness, novelty, stability, S.U.N., inputs, CLI and plots, on real MP structures."""

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystalformer_rl.evaluation import (
    ReferenceIndex,
    add_evaluate_arguments,
    check_composition_validity,
    check_structure_validity,
    composition_validity,
    compute_ehull,
    deduplicate,
    evaluate_crystals,
    evaluate_structures,
    load_crystals,
    novelty,
    plot_ehull_histogram,
    plot_property_scatter,
    plot_space_group_bars,
    run_evaluate,
    structure_validity,
)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PILOT = SHARED / "data" / "mp20_pilot"


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return pd.read_csv(PILOT / "train.csv.gz")


@pytest.fixture(scope="module")
def val() -> pd.DataFrame:
    return pd.read_csv(PILOT / "val.csv.gz")


@pytest.fixture(scope="module")
def val_structures(val) -> list[Structure]:
    return [Structure.from_str(c, fmt="cif") for c in val.cif[:40]]


@pytest.fixture(scope="module")
def reference() -> ReferenceIndex:
    return ReferenceIndex.from_file(PILOT / "train.csv.gz", progress=False)


def rocksalt(a: float = 5.64, anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def fake_ehull(values: dict[str, float | None]):
    """E_hull by reduced formula: a cheap stand-in for the MLIP reward."""

    def fn(structures):
        return [values.get(s.composition.reduced_formula) for s in structures]

    return fn


# ---------------------------------------------------------------------------------------------- validity
def test_mp_structures_are_structurally_valid(val_structures):
    assert all(structure_validity(s) for s in val_structures)
    # CDVAE's SMACT test rejects a minority of real MP compounds (e.g. mixed valence); most pass
    comp = [composition_validity(s) for s in val_structures]
    assert sum(comp) / len(comp) > 0.8
    assert composition_validity(val_structures[0])  # TmMgHg2: an all-metal alloy


def test_overlapping_atoms_and_tiny_cells_are_invalid(val_structures):
    s = val_structures[1].copy()
    target = s[0].coords + np.array([0.3, 0.0, 0.0])
    s.replace(1, s[1].species, target, coords_are_cartesian=True)
    reason = check_structure_validity(s)
    assert reason is not None and "Å apart" in reason
    assert not structure_validity(s)
    tiny = Structure(Lattice.cubic(0.4), ["Si"], [[0, 0, 0]])
    assert "volume" in check_structure_validity(tiny)
    assert structure_validity(Structure(Lattice.cubic(2.5), ["Po"], [[0, 0, 0]]))  # one atom: no pair at all


def test_composition_validity_charge_balance():
    nacl = rocksalt()
    # NaCl2 in the fluorite arrangement: an ionic structure, but no charge-neutral oxidation states
    nacl2 = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.5), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    assert nacl2.composition.reduced_formula == "NaCl2" and structure_validity(nacl2)
    assert composition_validity(nacl)
    assert not composition_validity(nacl2)
    assert "charge-neutral" in check_composition_validity(nacl2)
    assert composition_validity("Fe2O3") and composition_validity("Cu3Au") and composition_validity("Si")
    assert not composition_validity("Fe3O4")  # mixed valence fails, as in CDVAE
    assert check_composition_validity("NaHe") is not None  # no oxidation states for He


# ---------------------------------------------------------------------------------------- uniqueness
def test_duplicates_are_counted_once(val_structures):
    s = val_structures[2]
    supercell = s.copy().make_supercell([2, 1, 1])
    perturbed = s.copy().perturb(0.02, min_distance=0.01)
    other = val_structures[3]
    assert deduplicate([s, supercell, perturbed, other, None], progress=False) == [0, 0, 0, 3, None]

    result = evaluate_structures([s, other, supercell, perturbed], stability=False, progress=False)
    assert result.table["unique"].tolist() == [True, True, False, False]
    assert result.summary["n_unique"] == 2


# ------------------------------------------------------------------------------------------- novelty
def test_novelty_against_reference(train, reference):
    assert len(reference) == len(train)
    seen = Structure.from_str(train.cif[2], fmt="cif")  # LiMnIr2, in the reference
    seen_super = seen.copy().make_supercell([1, 1, 2])
    strained = seen.copy()
    strained.lattice = Lattice(seen.lattice.matrix @ np.diag([1.0, 1.0, 1.6]))
    substituted = seen.copy().replace_species({"Li": "Na"})
    flags = novelty([seen, seen_super, strained, substituted], reference, progress=False)
    assert flags == [False, False, True, True]
    # only formulas that were queried got parsed
    assert set(reference._parsed) <= {"LiMnIr2", "NaMnIr2"}
    # optional same-space-group mode: the known structure still matches itself
    assert not reference.is_novel(seen, same_space_group=True)


def test_reference_from_token_strings(train, tmp_path):
    from crystalformer_rl.tokenization import CrystalTokenizer

    tok = CrystalTokenizer()
    cifs = train.cif[:6].tolist()
    tokens = [tok.encode(c) for c in cifs]
    frame = pd.DataFrame({"id": train.material_id[:6], "tokens": [t.to_string() for t in tokens]})
    frame.to_parquet(tmp_path / "reference.parquet")
    # the corpus / prepare-data layout: token arrays, no text column
    pd.DataFrame([t.as_dict() for t in tokens]).to_parquet(tmp_path / "arrays.parquet")
    known = Structure.from_str(cifs[4], fmt="cif")
    for name in ("reference.parquet", "arrays.parquet"):
        index = ReferenceIndex.from_file(tmp_path / name, progress=False)
        assert len(index) == 6
        assert not index.is_novel(known)
        assert index.is_novel(rocksalt())


# -------------------------------------------------------------------------------- stability and S.U.N.
def test_sun_combination_logic(train, val_structures, reference):
    known = Structure.from_str(train.cif[2], fmt="cif")  # LiMnIr2: not novel
    a = val_structures[2]
    b = val_structures[3]
    d = val_structures[5]
    formulas = [s.composition.reduced_formula for s in (a, b, d)]
    assert len(set(formulas)) == 3 and "LiMnIr2" not in formulas
    a_copy = a.copy().perturb(0.02)

    calls = {"n": 0}

    def ehull_fn(structures):
        calls["n"] += 1
        out = []
        for s in structures:
            f = s.composition.reduced_formula
            if f == a.composition.reduced_formula:  # first copy unstable, second stable
                out.append(0.5 if s is a else 0.05)
            else:
                out.append({formulas[1]: 0.1, "LiMnIr2": 0.0, formulas[2]: None}[f])
        return out

    structures = [a, a_copy, b, known, d, None]
    result = evaluate_structures(
        structures,
        errors=[None] * 5 + ["could not decode tokens"],
        reference=reference,
        ehull_fn=ehull_fn,
        sampling_seconds=4.0,
        progress=False,
    )
    t = result.table
    assert t["stable"].tolist() == [False, True, True, True, False, False]  # 0.1 is stable (<= threshold)
    assert t["unique"].tolist() == [True, False, True, True, True, False]
    assert t["novel"].tolist() == [True, True, True, False, True, False]
    # the A cluster counts once, through its stable copy
    assert t["sun"].tolist() == [False, True, True, False, False, False]
    s = result.summary
    assert s["n_total"] == 6 and s["n_built"] == 5 and s["n_sun"] == 2
    assert s["frac_sun"] == pytest.approx(2 / 6)
    assert s["sun_per_second"] == pytest.approx(0.5)
    assert t.loc[4, "e_hull_reason"] and t.loc[5, "error"] == "could not decode tokens"
    assert not t.loc[5, "valid"]

    strict = evaluate_structures(
        structures, reference=reference, ehull_fn=ehull_fn, ehull_threshold=0.09, progress=False
    )
    assert strict.table["stable"].tolist()[2] is False


def test_failures_never_abort(val_structures):
    def flaky(structures):
        if any(len(s) == len(val_structures[1]) for s in structures):
            raise RuntimeError("model exploded")
        return [0.0] * len(structures)

    values, reasons = compute_ehull(val_structures[:4], flaky, batch_size=4, progress=False)
    assert values[1] is None and "model exploded" in reasons[1]
    assert [v for i, v in enumerate(values) if i != 1] == [0.0, 0.0, 0.0]

    def relax_fn(structures):
        (s,) = structures
        if len(s) == len(val_structures[1]):
            raise RuntimeError("relaxation diverged")
        return [(s.copy(), -1.0 * len(s))]

    result = evaluate_structures(
        val_structures[:3], relax=True, ehull_fn=lambda ss: [0.02] * len(ss), relax_fn=relax_fn, progress=False
    )
    t = result.table
    assert "diverged" in t.loc[1, "relax_reason"]
    assert t["stable"].tolist() == [True, False, True]  # judged on the relaxed structures
    assert t.loc[0, "relaxed_cif"].startswith("# generated using pymatgen") and pd.isna(t.loc[1, "relaxed_cif"])


# --------------------------------------------------------------------------------------------- inputs
def test_inputs_folder_extxyz_tokens_and_metadata(val, tmp_path):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    from crystalformer_rl.tokenization import CrystalTokenizer

    structures = [Structure.from_str(c, fmt="cif") for c in val.cif[:3]]
    folder = tmp_path / "cifs"
    folder.mkdir()
    for i, s in enumerate(structures):
        s.to(filename=str(folder / f"s{i}.cif"))
    (folder / "broken.cif").write_text("data_x\n_cell_length_a oops\n")
    loaded = load_crystals(folder, progress=False)
    assert len(loaded) == 4 and loaded.names[0] == "broken" and loaded.structures[0] is None

    xyz = tmp_path / "samples.extxyz"
    write(xyz, [AseAtomsAdaptor.get_atoms(s) for s in structures], format="extxyz")
    loaded = load_crystals(xyz, progress=False)
    assert [len(s) for s in loaded.structures] == [len(s) for s in structures]

    tok = CrystalTokenizer()
    tokens = [tok.encode(s).to_string() for s in structures] + ["225-z-Xx-nonsense"]
    frame = pd.DataFrame({"tokens": tokens, "band_gap": [1.0, 2.0, 3.0, 4.0]})
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame).replace_schema_metadata({b"sampling_seconds": b"12.5"})
    pq.write_table(table, tmp_path / "samples.parquet")
    loaded = load_crystals(tmp_path / "samples.parquet", progress=False)
    assert loaded.sampling_seconds == 12.5
    assert loaded.structures[3] is None and "tokens" in loaded.errors[3]
    assert loaded.extra["band_gap"].tolist() == [1.0, 2.0, 3.0, 4.0]
    result = evaluate_crystals(tmp_path / "samples.parquet", stability=False, progress=False)
    assert result.table["valid"].tolist()[3] is False and result.summary["sampling_seconds"] == 12.5

    frame.to_csv(tmp_path / "samples.csv", index=False)
    (tmp_path / "samples.meta.json").write_text(json.dumps({"sampling_seconds": 3}))
    assert load_crystals(tmp_path / "samples.csv", progress=False).sampling_seconds == 3.0


# ----------------------------------------------------------------------------------------- CLI, plots
def test_cli_writes_table_summary_and_plots(val, tmp_path, monkeypatch):
    import crystalformer_rl.evaluation.evaluate as ev

    samples = val.iloc[:12][["material_id", "cif", "band_gap", "formation_energy_per_atom"]]
    samples = pd.concat([samples, samples.iloc[:2]], ignore_index=True)  # two duplicates
    path = tmp_path / "samples.csv"
    samples.to_csv(path, index=False)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(ev, "default_ehull_fn", lambda **kw: lambda ss: rng.uniform(-0.05, 0.4, len(ss)).tolist())
    monkeypatch.setattr(ev, "_ehull_reward_class", lambda: object)
    previous = tmp_path / "base.csv"
    pd.DataFrame({"e_hull": rng.uniform(0, 1, 50)}).to_csv(previous, index=False)

    from crystalformer_rl import cli

    if "evaluate" in cli.COMMANDS:  # once registered, the command line parses the same arguments
        parser = cli.build_parser()
        prefix = ["evaluate"]
    else:
        parser, prefix = add_evaluate_arguments(argparse.ArgumentParser()), []
    args = parser.parse_args(
        prefix
        + [
            str(path),
            "--output-dir",
            str(tmp_path / "out"),
            "--reference",
            str(PILOT / "train.csv.gz"),
            "--sampling-seconds",
            "7",
            "--compare",
            f"base={previous}",
            "--scatter",
            "band_gap",
            "formation_energy_per_atom",
            "--no-progress",
        ]
    )
    summary = run_evaluate(args)
    out = tmp_path / "out"
    for name in (
        "structures.csv",
        "structures.parquet",
        "summary.json",
        "ehull_histogram.png",
        "space_groups.png",
        "scatter_band_gap_formation_energy_per_atom.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    table = pd.read_csv(out / "structures.csv")
    assert len(table) == 14 and table["unique"].sum() == 12
    assert {"formula", "space_group", "num_atoms", "valid", "e_hull", "stable", "novel", "sun"} <= set(table.columns)
    assert table["name"].iloc[0] == samples.material_id.iloc[0]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["n_total"] == 14 and saved["n_sun"] == summary["n_sun"] <= saved["n_stable"]
    assert saved["sun_per_second"] == pytest.approx(summary["n_sun"] / 7)
    assert saved["settings"]["reference_size"] == 1000


def test_plots(tmp_path):
    rng = np.random.default_rng(1)
    p = plot_ehull_histogram(
        {"base": rng.normal(0.2, 0.2, 200).tolist() + [None, math.nan], "RL": rng.normal(0.05, 0.1, 100)},
        tmp_path / "hist.png",
    )
    assert p.read_bytes()[:4] == b"\x89PNG"
    plot_space_group_bars({"base": [225, 225, 1, 62, None], "RL": [225, 194, 194]}, tmp_path / "sg.png")
    plot_property_scatter(
        rng.uniform(0.1, 5, 30),
        rng.uniform(1, 50, 30),
        tmp_path / "scatter.pdf",
        xlabel="band gap (eV)",
        ylabel="ε",
        groups=["base"] * 15 + ["RL"] * 15,
        product_isolines=[20, 40],
    )
    assert (tmp_path / "sg.png").stat().st_size > 0 and (tmp_path / "scatter.pdf").read_bytes()[:4] == b"%PDF"


# ------------------------------------------------------------------------------------------ real CHGNet
@pytest.fixture
def one_thread():
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two busy shared cores are ~50x slower than one
    yield
    torch.set_num_threads(n)


def test_real_chgnet_stability(val, one_thread):
    pytest.importorskip("chgnet")
    try:
        from crystalformer_rl.reward_models.ehull import EhullReward
        from crystalformer_rl.reward_models.hull import ReferenceHull
    except ImportError as exc:
        pytest.skip(f"reward models not available: {exc}")

    rows = val[val.material_id.isin(["mp-865981", "mp-754553"])]  # TmMgHg2 (4 atoms), Zn3N2
    structures = [Structure.from_str(c, fmt="cif") for c in rows.cif]
    elements = {el.symbol for s in structures for el in s.composition.elements}
    entries = pd.read_csv(SHARED / "data" / "mp_hull" / "mp_entries.csv.gz")
    keep = entries.composition.map(lambda c: set(re.findall(r"[A-Z][a-z]?", c)) <= elements)
    hull = ReferenceHull.from_dataframe(entries[keep], energy_scale="r2scan", name="mp-subset")
    from crystalformer_rl.evaluation import default_ehull_fn

    ehull_fn = default_ehull_fn(EhullReward(hull=hull))
    result = evaluate_structures(structures, relax=True, steps=30, ehull_fn=ehull_fn, progress=False)
    t = result.table
    assert t["e_hull"].notna().all() and t["e_hull_relaxed"].notna().all(), t[["e_hull_reason"]]
    # MP's own values are 0 and 0.01 eV/atom; CHGNet-r2SCAN should put these known crystals near the hull
    assert (t["e_hull_relaxed"].astype(float).abs() < 0.25).all()
    assert t["stable"].all()
    assert Structure.from_str(t.loc[0, "relaxed_cif"], fmt="cif").composition == structures[0].composition
