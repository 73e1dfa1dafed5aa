"""Tokenizer throughput on real MP-20 crystals: encode and decode structures per second, one process.

    python benchmarks/bench_tokenize.py [--n 200]

Prints JSON. The baseline in the same run is the reference's own preprocessing recipe without our code
(SpacegroupAnalyzer refinement + pyxtal.from_seed per structure), the part of ``process_one`` that dominates.
"""

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import pandas as pd
from pymatgen.core import Structure


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(SHARED / "data" / "mp20_biternary" / "val.csv.gz"))
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
    from pyxtal import pyxtal

    from crystalformer_rl.tokenization import CrystalTokenizer

    cifs = pd.read_csv(args.data).cif.iloc[: args.n].tolist()
    structures = [Structure.from_str(c, fmt="cif") for c in cifs]
    tokenizer = CrystalTokenizer()
    tokenizer.encode(structures[0])  # load the tables

    start = time.perf_counter()
    for s in structures:
        xtal = pyxtal()
        xtal.from_seed(SpacegroupAnalyzer(s, symprec=0.01).get_refined_structure(), tol=0.01)
    baseline = time.perf_counter() - start

    start = time.perf_counter()
    tokens = [tokenizer.encode(s) for s in structures]
    encode = time.perf_counter() - start

    start = time.perf_counter()
    for t in tokens:
        t.to_structure()
    decode = time.perf_counter() - start

    start = time.perf_counter()
    for t in tokens:
        t.to_string()
    to_string = time.perf_counter() - start

    n = len(structures)
    print(
        json.dumps(
            {
                "benchmark": "tokenize",
                "structures": n,
                "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
                "encode_structures_per_s": round(n / encode, 1),
                "decode_structures_per_s": round(n / decode, 1),
                "to_string_per_s": round(n / to_string, 1),
                "baseline_spglib_pyxtal_only_structures_per_s": round(n / baseline, 1),
                "encode_overhead_vs_baseline": round(encode / baseline, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
