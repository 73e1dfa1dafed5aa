import json

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystalformer_rl.commands import main as cli_main
from crystalformer_rl.data import load_crystal_dataset, load_prepared, prepare_data
from crystalformer_rl.tokenization import CrystalCollator, CrystalTokenizer, CrystalTokens, TooManySitesError


def _too_many_sites(cif: str) -> bool:
    if len(Structure.from_str(cif, fmt="cif")) <= 40:
        return False
    try:
        CrystalTokenizer().encode(cif)
    except TooManySitesError:
        return True
    return False


@pytest.fixture(scope="module")
def mixed_csv(shared, tmp_path_factory):
    """Eight real MP crystals and one of each kind of bad row."""
    good = pd.read_csv(shared / "data" / "mp20_pilot" / "val.csv.gz").iloc[:8][["material_id", "cif"]]
    big = pd.read_csv(shared / "data" / "mpts52" / "val.csv.gz")
    big_cif = next(c for c in big.cif[:300] if _too_many_sites(c))
    disordered = Structure(Lattice.cubic(4.2), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5] * 3])
    bad = pd.DataFrame(
        {
            "material_id": ["bad-cif", "bad-disorder", "bad-empty", "bad-big"],
            "cif": [
                "data_broken\n_cell_length_a x\n",
                disordered.to(fmt="cif"),
                "data_empty\n_cell_length_a 3\n_cell_length_b 3\n_cell_length_c 3\n"
                "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n",
                big_cif,
            ],
        }
    )
    frame = pd.concat([good.iloc[:4], bad, good.iloc[4:]], ignore_index=True)
    path = tmp_path_factory.mktemp("csv") / "mixed.csv.gz"
    frame.to_csv(path, index=False)
    return path


def test_prepare_skips_and_reports_bad_rows(mixed_csv, tmp_path):
    summary = prepare_data(mixed_csv, tmp_path / "out", tokenizer=None, shard_size=5, progress=False)
    assert summary["encoded"] == 8 and summary["failed"] == 4
    failures = pd.read_csv(tmp_path / "out" / "failures.csv").set_index("id")
    assert set(failures.index) == {"bad-cif", "bad-disorder", "bad-empty", "bad-big"}
    assert failures.loc["bad-disorder", "error_type"] == "DisorderedStructureError"
    assert failures.loc["bad-empty", "error_type"] == "EmptyStructureError"
    assert failures.loc["bad-big", "error_type"] == "TooManySitesError"
    assert all(failures.loc[name, "error"].startswith(name) for name in failures.index)

    ds = load_prepared(tmp_path / "out")
    assert len(ds) == 8 and {"G", "W", "A", "XYZ", "L", "cif", "id"} <= set(ds.column_names)
    batch = CrystalCollator()([ds[i] for i in range(4)])
    assert batch["W"].shape[1] == max(ds[i]["num_sites"] for i in range(4)) + 1
    assert CrystalTokens.from_dict(ds[0]).num_atoms == ds[0]["num_atoms"]


def test_prepare_resumes_without_redoing_finished_shards(mixed_csv, tmp_path):
    out = tmp_path / "out"
    prepare_data(mixed_csv, out, shard_size=5, progress=False)
    shards = sorted((out / "shards").glob("shard-*.parquet"))
    assert len(shards) == 3
    stamp = shards[0].stat().st_mtime_ns
    shards[1].unlink()  # as if the run had been killed during the second shard
    summary = prepare_data(mixed_csv, out, shard_size=5, progress=False)
    assert shards[0].stat().st_mtime_ns == stamp and shards[1].exists()
    assert summary["encoded"] == 8
    with pytest.raises(ValueError, match="other arguments"):
        prepare_data(mixed_csv, out, shard_size=3, progress=False)


def test_streaming_and_parallel_give_the_same_tokens(mixed_csv, tmp_path):
    prepare_data(mixed_csv, tmp_path / "a", shard_size=100, progress=False)
    prepare_data(mixed_csv, tmp_path / "b", shard_size=100, streaming=True, num_proc=2, progress=False)
    a, b = load_prepared(tmp_path / "a"), load_prepared(tmp_path / "b", streaming=True)
    rows_b = list(b)
    assert [r["id"] for r in rows_b] == a["id"]
    assert [r["W"] for r in rows_b] == a["W"]


def test_structure_dict_column_and_parquet(tmp_path, shared):
    frame = pd.read_csv(shared / "data" / "mp20_pilot" / "val.csv.gz").iloc[:3]
    frame["structure"] = [json.dumps(Structure.from_str(c, fmt="cif").as_dict()) for c in frame.cif]
    path = tmp_path / "alex_like.parquet"
    frame[["material_id", "structure"]].to_parquet(path)
    assert load_crystal_dataset(path).column_names == ["material_id", "structure"]
    summary = prepare_data(path, tmp_path / "out", progress=False)
    assert summary["encoded"] == 3


def test_missing_structure_column_is_a_clear_error(tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"formula": ["NaCl"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="no structure column"):
        prepare_data(path, tmp_path / "out", progress=False)


def test_cli_prepare_data(mixed_csv, tmp_path, capsys):
    assert cli_main(["prepare-data", str(mixed_csv), str(tmp_path / "cli"), "--num_proc", "1", "--limit", "6"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["encoded"] + summary["failed"] == 6
