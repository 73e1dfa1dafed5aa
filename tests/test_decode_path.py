"""One path from sampler output to CrystalTokens and Structure, decoded once and shared; one "anything ->
Structure" converter (issue 13, item 2). On real MP-20 crystals and the shipped default model."""

import json
import time

import ase.io
import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifParser
from tqdm.auto import tqdm

import crystalformer_rl.tokenization.tokenization_crystalformer as tokenization
from crystalformer_rl.materials.io import TOKEN_ARRAYS, structure_from_record
from crystalformer_rl.pretrained import load_model
from crystalformer_rl.reward_models import as_structure
from crystalformer_rl.sampling import sample_crystals, sample_to_frame, write_samples
from crystalformer_rl.tokenization import (
    CrystalTokenizationError,
    CrystalTokenizer,
    CrystalTokens,
    InvalidStructureError,
    InvalidTokensError,
    to_structure,
)
from tests.helpers.rl_crystals import KNOWN_FRACTIONS, ToyEhull, known_inputs
from tests.test_rl_trainer import known_trainer


GROUPS = np.array([225, 1, 62, 194, 139, 14, 166] * 2)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def sampled(model):
    """One batch straight from the sampler (tensors), as every caller receives it."""
    with torch.no_grad():
        return model.sample(space_group=torch.as_tensor(GROUPS), seed=7)


@pytest.fixture(scope="module")
def structures(val):
    return [Structure.from_str(cif, fmt="cif") for cif in val.cif[:3]]


def same_crystal(a: Structure, b: Structure, atol: float = 1e-5) -> None:
    assert sorted(str(sp) for sp in a.species) == sorted(str(sp) for sp in b.species)
    np.testing.assert_allclose(a.lattice.parameters, b.lattice.parameters, atol=atol)


# ----------------------------------------------------------------------------------- sampler -> tokens
def test_from_batch_equals_the_per_row_construction(sampled):
    arrays = [getattr(sampled, k).detach().cpu().numpy() for k in ("G", "W", "A", "XYZ", "L")]
    by_hand = [CrystalTokens(int(g), w, a, xyz, lat) for g, w, a, xyz, lat in zip(*arrays)]
    for built in (
        CrystalTokens.from_batch(*(getattr(sampled, k) for k in ("G", "W", "A", "XYZ", "L"))),  # tensors
        CrystalTokens.from_batch(*arrays),  # numpy
        CrystalTokens.from_sampler_output(sampled),
    ):
        assert len(built) == len(GROUPS)
        for mine, theirs in zip(built, by_hand):
            assert type(mine.G) is int and mine.G == theirs.G
            for k in ("W", "A", "XYZ", "L"):
                np.testing.assert_array_equal(getattr(mine, k), getattr(theirs, k))
                assert getattr(mine, k).dtype == getattr(theirs, k).dtype
            assert mine.to_string() == theirs.to_string()
    with pytest.raises(ValueError, match="batch size"):
        CrystalTokens.from_batch(arrays[0][:3], *arrays[1:])


def test_decode_batch_equals_per_crystal_decode_and_gives_none_for_bad_rows(sampled):
    G, W, A, XYZ, L = (getattr(sampled, k).clone() for k in ("G", "W", "A", "XYZ", "L"))
    A[2, 0] = 0  # a site without an element
    W[5] = 0  # no atoms at all
    decoded = CrystalTokenizer().decode_batch(G, W, A, XYZ, L)
    assert decoded[2] is None and decoded[5] is None
    for i, tokens in enumerate(CrystalTokens.from_batch(G, W, A, XYZ, L)):
        if i in (2, 5):
            continue
        expected = tokenization.decode_tokens(tokens.G, tokens.W, tokens.A, tokens.XYZ, tokens.L)
        assert decoded[i] == expected
        np.testing.assert_allclose(decoded[i].frac_coords, expected.frac_coords)
    with pytest.raises(InvalidTokensError):
        CrystalTokenizer().decode_batch(G, W, A, XYZ, L, skip_errors=False)


# ------------------------------------------------------------------------------------------ the cache
def test_the_decoded_structure_is_cached_and_assignment_clears_it(structures):
    tokens = CrystalTokenizer().encode(structures[0])
    first = tokens.to_structure()
    assert tokens.to_structure() is first
    assert "_decoded" not in repr(tokens) and tokens == CrystalTokens.from_dict(tokens.as_dict())  # not compared
    tokens.L = tokens.L * np.array([1.1, 1.1, 1.1, 1, 1, 1])
    bigger = tokens.to_structure()
    assert bigger is not first and bigger.volume == pytest.approx(first.volume * 1.1**3)
    assert tokens.to_structure() is bigger
    tokens.W = tokens.W.copy()  # any field assignment, even to equal values, decodes again
    assert tokens.to_structure() is not bigger

    # from_string assigns L after construction: its structure is that of the parsed lattice
    parsed = CrystalTokens.from_string(tokens.to_string())
    np.testing.assert_allclose(parsed.to_structure().lattice.abc, bigger.lattice.abc, rtol=1e-6)


def test_a_decoding_error_is_cached_and_raised_every_time(monkeypatch, structures):
    calls = []
    original = tokenization.decode_tokens
    monkeypatch.setattr(tokenization, "decode_tokens", lambda *a: calls.append(1) or original(*a))
    bad = CrystalTokens.from_sites(225, [13], [57], [[0, 0, 0]], [1, 1, 1, 1.57, 1.57, 1.57])  # letter > wmax
    for _ in range(3):
        with pytest.raises(InvalidTokensError, match="Wyckoff letter"):
            bad.to_structure()
    assert len(calls) == 1
    bad.W = np.where(bad.W > 0, 1, 0)  # fixed: decodes now
    assert bad.to_structure().composition.reduced_formula == "La"
    assert len(calls) == 2


def test_one_rl_step_with_two_rewards_decodes_each_completion_once(tmp_path, monkeypatch):
    class OtherEhull(ToyEhull):
        name = "ehull_again"

    calls = []
    original = tokenization.decode_tokens

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(tokenization, "decode_tokens", counting)
    seen: list[list[int]] = []

    def identities(prompts, completions, **kwargs):  # a third reader of the structures: the same objects
        seen.append([id(as_structure(c)) for c in completions])
        return [0.0] * len(completions)

    trainer = known_trainer(tmp_path, [ToyEhull(), OtherEhull(), identities])
    assert trainer.args.log_crystal_metrics  # the metrics are a reader too
    trainer._generate_and_score_completions(known_inputs())
    assert len(calls) == len(known_inputs()) == 10  # not 10 per reward plus 10 for the metrics
    assert trainer._metrics["train"]["valid_fraction"] == [pytest.approx(KNOWN_FRACTIONS["valid_fraction"])]
    assert len(set(seen[0])) == 10


# ------------------------------------------------------------------------------------ one converter
def test_to_structure_accepts_every_form(structures, tmp_path):
    tokenizer = CrystalTokenizer()
    for i, s in enumerate(structures):
        path = tmp_path / f"crystal-{i}.cif"
        s.to(filename=str(path), fmt="cif")
        for form in (
            s,
            {"structure": s},
            {"structure": s.as_dict()},
            s.as_dict(),
            s.to_json(),
            json.dumps({"structure": s.as_dict()}),
            s.to(fmt="cif"),
            path,
            str(path),
            AseAtomsAdaptor.get_atoms(s),
        ):
            same_crystal(to_structure(form), s)
        tokens = tokenizer.encode(s)
        decoded = tokens.to_structure()
        assert to_structure(tokens) is decoded and as_structure({"structure": tokens}) is decoded
        for form in (tokens.to_string(), tokens.as_dict(), {"structure": tokens.to_string()}):
            same_crystal(to_structure(form), decoded)
    assert as_structure is to_structure


@pytest.mark.parametrize(
    "bad, named",
    [
        ("NaCl", "'NaCl'"),
        ("Na Cl rock salt", "'Na Cl rock salt'"),
        (42, "42"),
        ({"lattice": "nope"}, "{'lattice'"),
        ("{broken json", "'{broken json'"),
        ("data_x\n_cell_length_a oops\nloop_\n_atom_site_label\nNa\n", "'data_x'"),
        ("", "''"),
        (None, "None"),
    ],
)
def test_a_bad_input_gives_one_line_naming_it(bad, named):
    with pytest.raises(InvalidStructureError) as info:
        to_structure(bad)
    message = str(info.value)
    assert "\n" not in message and message.startswith(named), message
    with pytest.raises(InvalidStructureError, match="^my-crystal: "):
        to_structure(bad, name="my-crystal")


def test_missing_files_and_bad_token_strings(tmp_path):
    with pytest.raises(InvalidStructureError, match="no such file"):
        to_structure(tmp_path / "nope.cif")
    with pytest.raises(InvalidTokensError, match="cannot parse crystal string"):
        to_structure("225-a-Qq-0-0-0-5-5-5-90-90-90")
    with pytest.raises(InvalidTokensError):  # parses, but is no crystal
        to_structure("225-a-Na-0-0-0--5-5-5-90-90-90")  # a negative length
    with pytest.raises(InvalidStructureError, match="unusable ASE Atoms"):
        to_structure(ase.Atoms("H"))  # no cell


def test_table_cells_go_through_the_one_converter(structures):
    s = structures[0]
    tokens = CrystalTokenizer().encode(s)
    for value, column in ((s.to(fmt="cif"), "cif"), (s.as_dict(), "structure"), (s.to_json(), "structure")):
        same_crystal(structure_from_record(value, column), s)
    same_crystal(structure_from_record(tokens.to_string(), "tokens"), tokens.to_structure())
    same_crystal(structure_from_record(tokens.to_string(), "cif"), tokens.to_structure())  # detected by its form
    same_crystal(structure_from_record(tokens.as_dict(), TOKEN_ARRAYS), tokens.to_structure())
    for empty in ("", None, float("nan")):
        with pytest.raises(ValueError, match="empty 'cif' cell"):
            structure_from_record(empty, "cif")


# ----------------------------------------------------------------------------------- sampling library
def old_sample_to_frame(model, space_groups, batch_size=500, progress=True, **kwargs):
    """``sample_to_frame`` as it was before ``sample_crystals`` (its loop by hand), to check nothing changed."""
    rows, seconds = [], 0.0
    seed = kwargs.pop("seed", None)
    bar = tqdm(total=len(space_groups), desc="sampling", unit="crystal", disable=not progress)
    for index, start in enumerate(range(0, len(space_groups), batch_size)):
        groups = torch.as_tensor(space_groups[start : start + batch_size])
        tic = time.perf_counter()
        with torch.no_grad():
            out = model.sample(space_group=groups, seed=None if seed is None else seed + index, **kwargs)
        seconds += time.perf_counter() - tic
        arrays = {k: getattr(out, k).detach().cpu().numpy() for k in ("G", "W", "A", "XYZ", "L")}
        terms = {k: getattr(out, k).detach().cpu().numpy() for k in ("logp", "logp_w", "logp_a", "logp_xyz", "logp_l")}
        for i in range(len(groups)):
            tokens = CrystalTokens(
                int(arrays["G"][i]), arrays["W"][i], arrays["A"][i], arrays["XYZ"][i], arrays["L"][i]
            )
            row = {"id": f"sample-{start + i:06d}", "G": tokens.G, "num_sites": tokens.num_sites}
            try:
                row["tokens"] = tokens.to_string()
                row["formula"] = tokens.formula
                row["num_atoms"] = tokens.num_atoms
            except (CrystalTokenizationError, ValueError, IndexError) as exc:
                row["tokens"], row["error"] = None, str(exc)
            row.update({k: float(v[i]) for k, v in terms.items()})
            rows.append(row)
        bar.update(len(groups))
    bar.close()
    return pd.DataFrame(rows), seconds


def test_sample_to_frame_is_unchanged_and_built_from_sample_crystals(model):
    kwargs = {"batch_size": 5, "progress": False, "seed": 11, "temperature": 1.0}
    frame, _ = sample_to_frame(model, GROUPS, **kwargs)
    expected, _ = old_sample_to_frame(model, GROUPS, **kwargs)
    pd.testing.assert_frame_equal(frame, expected)

    crystals, logps, seconds = sample_crystals(model, GROUPS, **kwargs)
    assert seconds > 0 and len(crystals) == len(GROUPS)
    assert frame["tokens"].tolist() == [c.to_string() for c in crystals]
    assert frame["id"].tolist() == [f"sample-{i:06d}" for i in range(len(GROUPS))]
    for k, values in logps.items():
        assert values.shape == (len(GROUPS),)
        np.testing.assert_array_equal(frame[k].to_numpy(), values.astype(float))
    other = sample_to_frame(model, GROUPS, **{**kwargs, "seed": 12})[0]
    assert other["tokens"].tolist() != frame["tokens"].tolist()


def test_write_samples_decodes_the_sampled_tokens_themselves(model, tmp_path):
    kwargs = {"batch_size": 5, "progress": False, "seed": 3}
    crystals, _, seconds = sample_crystals(model, GROUPS, **kwargs)
    frame, _ = sample_to_frame(model, GROUPS, **kwargs)
    exact = write_samples(frame, tmp_path / "exact", ["csv", "cif", "extxyz"], seconds, {}, crystals=crystals)
    rounded = write_samples(frame, tmp_path / "rounded", ["csv", "cif", "extxyz"], seconds, {})
    assert exact["valid_tokens"] == rounded["valid_tokens"] > 0
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "exact" / "samples.csv"), pd.read_csv(tmp_path / "rounded" / "samples.csv")
    )

    valid = [i for i, c in enumerate(crystals) if isinstance(frame["tokens"][i], str)]
    atoms = {a.info["id"]: a for a in ase.io.read(tmp_path / "exact" / "samples.extxyz", index=":")}
    rounded_atoms = {a.info["id"]: a for a in ase.io.read(tmp_path / "rounded" / "samples.extxyz", index=":")}
    worst_rounded = 0.0
    for i in valid:
        name, truth = frame["id"][i], crystals[i].to_structure()
        # frac_tolerance 0: pymatgen would otherwise snap a coordinate within 1e-4 of 1/3 or 2/3 onto it
        cif = CifParser(tmp_path / "exact" / "cifs" / f"{name}.cif", frac_tolerance=0)
        from_cif = cif.parse_structures(primitive=False)[0]
        np.testing.assert_allclose(from_cif.lattice.parameters, truth.lattice.parameters, atol=1e-6)
        assert StructureMatcher(ltol=1e-4, stol=1e-4, angle_tol=1e-3, primitive_cell=False, scale=False).fit(
            from_cif, truth
        )
        # extxyz keeps 8 decimals; the token strings 6 (lattice in Å and degrees)
        np.testing.assert_allclose(atoms[name].cell[:], truth.lattice.matrix, atol=2e-8)
        np.testing.assert_allclose(atoms[name].positions, truth.cart_coords, atol=2e-8)
        worst_rounded = max(worst_rounded, float(np.abs(rounded_atoms[name].cell[:] - truth.lattice.matrix).max()))
    assert worst_rounded > 2e-8  # without `crystals` the files hold the rounded tokens, not the sampled ones
    with pytest.raises(ValueError, match="crystals for a table"):
        write_samples(frame, tmp_path / "short", ["csv"], seconds, {}, crystals=crystals[:3])


# ----------------------------------------------------------------------------------- SFT on sampled tokens
def test_sft_without_relaxation_fine_tunes_on_the_sampled_tokens_themselves(model, tmp_path):
    """Every kept row is the sampler's own crystal to float64 precision, not its 6-decimal token string."""
    from crystalformer_rl.pretrained import space_group_distribution
    from crystalformer_rl.sampling import draw_space_groups
    from crystalformer_rl.trainers.sft import build_sft_dataset

    dataset, counts = build_sft_dataset(
        model,
        tmp_path,
        num_samples=12,
        relax=False,
        sample_seed=3,
        ehull_fn=lambda structures: [0.0] * len(structures),
    )
    groups = draw_space_groups(12, None, space_group_distribution(None), 3)
    sampled, _, _ = sample_crystals(model, groups, seed=3, progress=False)
    decodable = []
    for crystal in sampled:
        try:
            crystal.to_structure()
            decodable.append(crystal)
        except CrystalTokenizationError:
            pass
    assert counts["kept"] == len(dataset) == len(decodable) > 0
    rounded_differs = False
    for row, crystal in zip(dataset, decodable):
        assert row["G"] == crystal.G and row["W"] == crystal.W[: crystal.num_sites].tolist()
        np.testing.assert_array_equal(np.asarray(row["XYZ"]), crystal.XYZ[: crystal.num_sites])
        np.testing.assert_array_equal(np.asarray(row["L"]), crystal.L)
        rounded = CrystalTokens.from_string(crystal.to_string())
        rounded_differs |= not np.array_equal(rounded.XYZ[: crystal.num_sites], crystal.XYZ[: crystal.num_sites])
    assert rounded_differs  # the old path (token strings) would have fine-tuned on other numbers
