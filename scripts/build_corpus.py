"""Build this project's training corpus from the real Materials Project data in ``../shared/data``, test-safe for
the MP-20 benchmark.

    python scripts/build_corpus.py --output data/corpus --num-proc 2                 # MP only (the default corpus)
    python scripts/build_corpus.py --output data/corpus-aflow --num-proc 2 --aflow   # + ICSD-derived AFLOW crystals

Sources, in priority order for de-duplication by ``material_id``: MP-20 train (the shared subset), MP-20 val,
MPTS-52 train (subset), val and test. MPTS-52 rows with more than n_max - 1 = 20 Wyckoff sites are dropped by the
tokenizer and counted. **No MP-20 test crystal enters**: a row is removed when its ``material_id`` is an MP-20 test
id, and also when ``StructureMatcher()`` matches it to an MP-20 test crystal of the same reduced formula (every
row is checked, not only those without an MP id). Crystals whose E_hull on the MP hull
(``../shared/data/mp_hull``, or the source's own column) is known and above ``--max-ehull`` eV/atom are dropped.

A deterministic held-out validation split of the MP rows (``--valid-fraction``, by a hash of the id) is written
beside the training split; AFLOW rows only train, so the validation split is the same with or without them. MP-20 test is for the benchmark only (``crystalformer-rl evaluate --benchmark mp20``)::

    data/corpus/train.parquet, validation.parquet   tokens + id + source + cif
    data/corpus/tokens/                             the prepare-data output (resumable), failures.csv
    data/corpus/stats.json                          counts per source and step

Structures are CC-BY 4.0 Materials Project data (via CDVAE's MP-20 and DiffCSP's MPTS-52, as redistributed by
the WyckoffTransformer repository); AFLOW structures (``--aflow``) are ICSD-derived AFLOW entries as redistributed
by the same repository (see docs/corpus.md).
"""

import argparse
import hashlib
import json
import multiprocessing as mp
import warnings
from pathlib import Path

import pandas as pd
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

from crystalformer_rl.data import DEFAULT_CORPUS_DIR, load_prepared, prepare_data
from crystalformer_rl.tokenization import CrystalTokenizer
from crystalformer_rl.utils import atomic_write_table, atomic_write_text, atomic_write_with


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SOURCES = [
    ("mp20/train", "mp20/train_subset.csv.gz"),
    ("mp20/val", "mp20/val.csv.gz"),
    ("mpts52/train", "mpts52_train/train_subset.csv.gz"),
    ("mpts52/val", "mpts52/val.csv.gz"),
    ("mpts52/test", "mpts52/test.csv.gz"),
]
AFLOW = ("aflow", "aflow/unique_structures.csv.gz")
MP20_TEST = "mp20/test.csv.gz"


def in_validation(material_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(material_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def read_sources(shared: Path, aflow: bool) -> pd.DataFrame:
    frames = []
    for name, rel in SOURCES:
        frame = pd.read_csv(shared / "data" / rel)
        ehull = frame.get("energy_above_hull", pd.Series(float("nan"), index=frame.index))
        frames.append(pd.DataFrame({"material_id": frame.material_id, "cif": frame.cif, "source_ehull": ehull}))
        frames[-1]["source"] = name
    if aflow:
        frame = pd.read_csv(shared / "data" / AFLOW[1])
        frames.append(
            pd.DataFrame({"material_id": "aflow-" + frame.idx.astype(str), "cif": frame.cif, "source_ehull": float("nan")})
        )
        frames[-1]["source"] = AFLOW[0]
    return pd.concat(frames, ignore_index=True)


def _formula(cif: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif").composition.reduced_formula


_TEST_BY_FORMULA: dict[str, list[tuple[str, str]]] = {}


def _init_matcher(test_by_formula):
    global _TEST_BY_FORMULA
    _TEST_BY_FORMULA = test_by_formula


def _matching_test_id(job: tuple[str, str]) -> str | None:
    """The id of an MP-20 test crystal this row's structure matches (same reduced formula), or None."""
    formula, cif = job
    candidates = _TEST_BY_FORMULA.get(formula)
    if not candidates:
        return None
    matcher = StructureMatcher()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(cif, fmt="cif")
        for test_id, test_cif in candidates:
            if matcher.fit(structure, Structure.from_str(test_cif, fmt="cif")):
                return test_id
    return None


def structure_matches_to_test(rows: pd.DataFrame, test: pd.DataFrame, num_proc: int) -> list[str | None]:
    test_by_formula: dict[str, list[tuple[str, str]]] = {}
    for test_id, formula, cif in zip(test.material_id, test.reduced_formula, test.cif):
        test_by_formula.setdefault(formula, []).append((test_id, cif))
    with mp.Pool(num_proc, initializer=_init_matcher, initargs=(test_by_formula,)) as pool:
        formulas = list(tqdm(pool.imap(_formula, rows.cif, chunksize=64), total=len(rows), desc="formulas"))
        jobs = list(zip(formulas, rows.cif))
        return list(
            tqdm(pool.imap(_matching_test_id, jobs, chunksize=16), total=len(jobs), desc="matching MP-20 test")
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--output", default=DEFAULT_CORPUS_DIR)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--max-ehull", type=float, default=0.1, help="eV/atom on the MP hull, where it is known")
    parser.add_argument("--aflow", action="store_true", help="add the ICSD-derived AFLOW structures (no MP id)")
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    raw = read_sources(shared, args.aflow)
    rows_per_source = raw.source.value_counts().to_dict()
    test = pd.read_csv(shared / "data" / MP20_TEST, usecols=["material_id", "reduced_formula", "cif"])
    steps = {}

    by_id = raw.material_id.isin(set(test.material_id))
    steps["removed_mp20_test_id"] = raw[by_id].source.value_counts().to_dict()
    rows = raw[~by_id].drop_duplicates("material_id", keep="first").reset_index(drop=True)
    steps["duplicates_dropped"] = int((~by_id).sum() - len(rows))

    hull = pd.read_csv(shared / "data" / "mp_hull" / "mp_entries.csv.gz", usecols=[0, 3])
    hull = dict(zip(hull.material_id, hull.energy_above_hull_eV_per_atom))
    rows["ehull"] = rows.material_id.map(hull).fillna(rows.source_ehull)
    above = rows.ehull > args.max_ehull
    steps["removed_ehull_above"] = rows[above].source.value_counts().to_dict()
    steps["ehull_unknown"] = rows[rows.ehull.isna()].source.value_counts().to_dict()
    rows = rows[~above].reset_index(drop=True)

    matches_file = out / "mp20_test_matches.csv"
    if matches_file.exists():  # the slow step: keep it across re-runs
        matched = pd.read_csv(matches_file).set_index("material_id").matched_test_id.reindex(rows.material_id)
        rows["matched_test_id"] = matched.values
    else:
        rows["matched_test_id"] = structure_matches_to_test(rows, test, args.num_proc)
        atomic_write_table(rows[["material_id", "matched_test_id"]], matches_file)
    by_structure = rows.matched_test_id.notna()
    steps["removed_mp20_test_structure"] = rows[by_structure].source.value_counts().to_dict()
    rows = rows[~by_structure].reset_index(drop=True)

    merged = out / "merged.csv.gz"
    if not merged.exists():
        atomic_write_with(
            lambda tmp: rows[["material_id", "cif"]].to_csv(tmp, index=False, compression="gzip"), merged
        )
    summary = prepare_data(merged, out / "tokens", tokenizer=CrystalTokenizer(), num_proc=args.num_proc)
    tokens = load_prepared(out / "tokens").to_pandas()
    tokens = tokens.merge(rows[["material_id", "source", "ehull"]], left_on="id", right_on="material_id").drop(
        columns="material_id"
    )
    # AFLOW rows (--aflow) only ever train: validation measures MP crystals, the same with or without them
    valid = tokens.id.map(lambda m: in_validation(m, args.valid_fraction)) & (tokens.source != AFLOW[0])
    tokens[~valid].to_parquet(out / "train.parquet", index=False)
    tokens[valid].to_parquet(out / "validation.parquet", index=False)

    failures = pd.read_csv(out / "tokens" / "failures.csv")
    failures = failures.merge(rows[["material_id", "source"]], left_on="id", right_on="material_id")
    stats = {
        "rows_per_source": rows_per_source,
        "rows": len(raw),
        **steps,
        "kept_before_tokenization": len(rows),
        "encoded": summary["encoded"],
        "rejected": summary["failed"],
        "rejected_by_reason": summary["failure_reasons"],
        "rejected_by_source": failures.source.value_counts().to_dict(),
        "train": int((~valid).sum()),
        "validation": int(valid.sum()),
        "encoded_by_source": tokens.source.value_counts().to_dict(),
        "train_by_source": tokens[~valid].source.value_counts().to_dict(),
        "space_groups": int(tokens.G.nunique()),
        "max_sites": int(tokens.num_sites.max()),
        "max_atoms": int(tokens.num_atoms.max()),
        "max_ehull": args.max_ehull,
    }
    atomic_write_text(json.dumps(stats, indent=2), out / "stats.json")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
