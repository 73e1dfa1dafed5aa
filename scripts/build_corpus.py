"""Build this project's training corpus from the real Materials Project data in ``../shared/data``.

    python scripts/build_corpus.py --output data/corpus --num-proc 2

Sources, in priority order for de-duplication by ``material_id``: MP-20 pilot train + val, MP-20 binary/ternary
val + test, MPTS-52 val + test (MPTS-52 rows with more than n_max - 1 = 20 Wyckoff sites are dropped by the
tokenizer and counted). A deterministic held-out validation split (``--valid-fraction``, by a hash of the
material id) is written beside the training split:

    data/corpus/train.parquet, validation.parquet   tokens + id + source + cif
    data/corpus/tokens/                             the prepare-data output (resumable), failures.csv
    data/corpus/stats.json                          counts per source and split

Structures are CC-BY 4.0 Materials Project data (via CDVAE's MP-20 and DiffCSP's MPTS-52, as redistributed by
the WyckoffTransformer repository); see ../shared/README.md.
"""

import argparse
import hashlib
import json
from pathlib import Path

import pandas as pd

from crystalformer_rl.data import DEFAULT_CORPUS_DIR, load_prepared, prepare_data
from crystalformer_rl.tokenization import CrystalTokenizer
from crystalformer_rl.utils import atomic_write_with


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SOURCES = [
    ("mp20_pilot/train", "mp20_pilot/train.csv.gz"),
    ("mp20_pilot/val", "mp20_pilot/val.csv.gz"),
    ("mp20_biternary/val", "mp20_biternary/val.csv.gz"),
    ("mp20_biternary/test", "mp20_biternary/test.csv.gz"),
    ("mpts52/val", "mpts52/val.csv.gz"),
    ("mpts52/test", "mpts52/test.csv.gz"),
]


def in_validation(material_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(material_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--output", default=DEFAULT_CORPUS_DIR)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    frames = []
    for name, rel in SOURCES:
        frame = pd.read_csv(Path(args.shared) / "data" / rel, usecols=["material_id", "cif"])
        frame["source"] = name
        frames.append(frame)
    raw = pd.concat(frames, ignore_index=True)
    rows_per_source = raw.source.value_counts().to_dict()
    unique = raw.drop_duplicates("material_id", keep="first").reset_index(drop=True)
    merged = out / "merged.csv.gz"
    if not merged.exists():
        atomic_write_with(lambda tmp: unique.to_csv(tmp, index=False, compression="gzip"), merged)

    summary = prepare_data(merged, out / "tokens", tokenizer=CrystalTokenizer(), num_proc=args.num_proc)
    tokens = load_prepared(out / "tokens").to_pandas()
    tokens = tokens.merge(unique[["material_id", "source"]], left_on="id", right_on="material_id").drop(
        columns="material_id"
    )
    valid = tokens.id.map(lambda m: in_validation(m, args.valid_fraction))
    tokens[~valid].to_parquet(out / "train.parquet", index=False)
    tokens[valid].to_parquet(out / "validation.parquet", index=False)

    failures = pd.read_csv(out / "tokens" / "failures.csv")
    failures = failures.merge(unique[["material_id", "source"]], left_on="id", right_on="material_id")
    stats = {
        "rows_per_source": rows_per_source,
        "rows": len(raw),
        "unique_material_ids": len(unique),
        "duplicates_dropped": len(raw) - len(unique),
        "encoded": summary["encoded"],
        "rejected": summary["failed"],
        "rejected_by_reason": summary["failure_reasons"],
        "rejected_by_source": failures.source.value_counts().to_dict(),
        "train": int((~valid).sum()),
        "validation": int(valid.sum()),
        "encoded_by_source": tokens.source.value_counts().to_dict(),
        "space_groups": int(tokens.G.nunique()),
        "max_sites": int(tokens.num_sites.max()),
        "max_atoms": int(tokens.num_atoms.max()),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
