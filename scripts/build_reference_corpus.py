"""Build the novelty reference shipped with the package from this project's training corpus.

    python scripts/build_reference_corpus.py --output crystalformer_rl/data/reference/mp_corpus_test_safe.csv.gz
    python scripts/build_reference_corpus.py --check 500           # also re-decode 500 rows against their CIFs

Reads data/corpus/train.parquet and validation.parquet (novelty is measured against train + val, as the MP-20
table does) and writes one row per crystal with ``id``
(the Materials Project id), ``reduced_formula`` and the CrystalFormer token string (6 decimals). A few MB instead
of the corpus's CIFs, and indexing it parses nothing: ``evaluate`` decodes only the structures whose formula a
sample shares. The output is byte-reproducible (sorted by id, gzip without a timestamp).

Structures are CC-BY 4.0 Materials Project data (MP-20 via CDVAE, MPTS-52 via DiffCSP, as redistributed by the
WyckoffTransformer repository); see docs/corpus.md and crystalformer_rl/data/reference/README.md.
"""

import argparse
import hashlib
import json
import time
import warnings

import numpy as np
import pandas as pd
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crystalformer_rl.data import DEFAULT_TRAIN_DATA, DEFAULT_VALIDATION_DATA
from crystalformer_rl.materials.matching import reference_table, write_reference_table
from crystalformer_rl.pretrained import SHIPPED_REFERENCE
from crystalformer_rl.tokenization import CrystalTokens


def check_roundtrip(corpus: pd.DataFrame, table: pd.DataFrame, n: int, seed: int = 0) -> dict:
    """Decode ``n`` random token strings and match them against the corpus's own CIFs."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(table), size=min(n, len(table)), replace=False)
    cifs = dict(zip(corpus["id"], corpus["cif"]))
    matcher = StructureMatcher()
    matched = formula_ok = 0
    for i in rows:
        row = table.iloc[int(i)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoded = CrystalTokens.from_string(row["tokens"]).to_structure()
            original = Structure.from_str(cifs[row["id"]], fmt="cif")
            matched += bool(matcher.fit(original, decoded))
        formula_ok += decoded.composition.element_composition.reduced_formula == row["reduced_formula"]
    return {"checked": len(rows), "structure_matches_cif": matched, "formula_matches": formula_ok}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--corpus",
        nargs="+",
        default=[DEFAULT_TRAIN_DATA, DEFAULT_VALIDATION_DATA],
        help="the corpus splits the reference holds (default: train + validation, what the model could have seen)",
    )
    parser.add_argument("--output", default=str(SHIPPED_REFERENCE))
    parser.add_argument("--check", type=int, default=200, help="rows to re-decode against their CIFs (0: none)")
    args = parser.parse_args()

    tic = time.perf_counter()
    columns = ["id", "G", "W", "A", "XYZ", "L", "cif"]
    corpus = pd.concat([pd.read_parquet(f, columns=columns) for f in args.corpus], ignore_index=True)
    corpus = corpus.sort_values("id", kind="stable").reset_index(drop=True)
    table = reference_table(corpus[["G", "W", "A", "XYZ", "L"]].to_dict("records"), ids=corpus["id"])
    path = write_reference_table(table, args.output)
    report = {
        "source": args.corpus,
        "rows": len(table),
        "dropped": len(corpus) - len(table),
        "distinct_formulas": int(table["reduced_formula"].nunique()),
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "build_seconds": round(time.perf_counter() - tic, 1),
    }
    if args.check:
        report["roundtrip"] = check_roundtrip(corpus, table, args.check)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
