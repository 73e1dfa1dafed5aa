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
beside the training split; AFLOW rows only train, so the validation split is the same with or without them. MP-20 test is for the benchmark only (``crystalformer-rl benchmark``)::

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
from pathlib import Path

import pandas as pd

from crystalformer_rl.data import DEFAULT_CORPUS_DIR, load_prepared, prepare_data
from crystalformer_rl.data.hygiene import matching_test_ids
from crystalformer_rl.tokenization import CrystalTokenizer, CrystalTokens
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
            pd.DataFrame(
                {"material_id": "aflow-" + frame.idx.astype(str), "cif": frame.cif, "source_ehull": float("nan")}
            )
        )
        frames[-1]["source"] = AFLOW[0]
    return pd.concat(frames, ignore_index=True)


def cached_matches(ids: pd.Series, cifs, test: pd.DataFrame, cache: Path, args) -> list:
    """The MP-20 test id each row matches (None: checked, no match), from ``cache`` where it holds the row and
    computed (and added to the cache) where it does not."""
    known = pd.Series(dtype=object)
    if cache.exists():
        frame = pd.read_csv(cache, dtype=str)
        known = frame.set_index(frame.columns[0]).matched_test_id
    todo = [i for i, row_id in enumerate(ids) if row_id not in known.index]
    if todo:
        found = matching_test_ids([cifs[i] for i in todo], test.material_id, test.cif, num_proc=args.num_proc)
        known = pd.concat([known, pd.Series(found, index=[ids.iloc[i] for i in todo], dtype=object)])
        frame = pd.DataFrame({"id": known.index, "matched_test_id": known.values})
        atomic_write_table(frame, cache)
    return [None if pd.isna(known[row_id]) else known[row_id] for row_id in ids]


class TokenCIFs:
    """The CIFs of encoded rows, decoded when asked for (only rows missing from the match cache are)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __getitem__(self, i: int) -> str:
        return tokens_to_cif(dict(self.rows[i]))


def tokens_to_cif(row: dict) -> str:
    row["XYZ"] = [list(xyz) for xyz in row["XYZ"]]
    return CrystalTokens.from_dict(row).to_structure().to(fmt="cif")


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
    test = pd.read_csv(shared / "data" / MP20_TEST, usecols=["material_id", "cif"])
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

    # The slow step, kept across re-runs; a row the cache has not seen is matched now (never read as "no match").
    rows["matched_test_id"] = cached_matches(rows.material_id, rows.cif, test, out / "mp20_test_matches.csv", args)
    by_structure = rows.matched_test_id.notna()
    steps["removed_mp20_test_structure"] = rows[by_structure].source.value_counts().to_dict()
    rows = rows[~by_structure].reset_index(drop=True)

    merged = out / "merged.csv.gz"
    if merged.exists() and list(pd.read_csv(merged, usecols=["material_id"]).material_id) != list(rows.material_id):
        raise SystemExit(f"{out}: built from other rows (other sources or --max-ehull); use a fresh --output folder")
    if not merged.exists():
        atomic_write_with(
            lambda tmp: rows[["material_id", "cif"]].to_csv(tmp, index=False, compression="gzip"), merged
        )
    summary = prepare_data(merged, out / "tokens", tokenizer=CrystalTokenizer(), num_proc=args.num_proc)
    tokens = load_prepared(out / "tokens").to_pandas()
    tokens = tokens.merge(rows[["material_id", "source", "ehull"]], left_on="id", right_on="material_id").drop(
        columns="material_id"
    )
    # What the model trains on is the symmetrised encoding: a slightly distorted copy of a test crystal (SrTiO3
    # tetragonal vs cubic) can match only after encoding, so the encoded crystals are checked as well.
    decoded = TokenCIFs(tokens[["G", "W", "A", "XYZ", "L"]].to_dict("records"))
    tokens["matched_test_id"] = cached_matches(tokens.id, decoded, test, out / "mp20_test_matches_encoded.csv", args)
    after_encoding = tokens.matched_test_id.notna()
    steps["removed_mp20_test_structure_after_encoding"] = tokens[after_encoding].source.value_counts().to_dict()
    tokens = tokens[~after_encoding].drop(columns="matched_test_id").reset_index(drop=True)
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
        "kept_after_encoding": len(tokens),
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
