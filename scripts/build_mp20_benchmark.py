"""Compute the features of MP-20's test split that the MP-20 benchmark compares samples with, and ship them.

    python scripts/build_mp20_benchmark.py                                # test split -> the package (~20 min, 2 cores)
    python scripts/build_mp20_benchmark.py --split train_subset --output data/mp20_features/train.npz   # + vs test

Writes ``crystalformer_rl/data/benchmarks/mp20_test_features.npz``: per test crystal (in the order of
``../shared/data/mp20/test.csv.gz``) its material id, CDVAE validities, mean CrystalNN "ops" site fingerprint,
magpie composition features, density and number of elements (see ``crystalformer_rl.evaluation.mp20``).
Resumable: chunks go to ``--cache`` as they finish.

MP-20 is CDVAE's split (Xie et al., ICLR 2022) of Materials Project data (CC-BY 4.0), as redistributed by the
WyckoffTransformer repository (Apache-2.0); see crystalformer_rl/data/benchmarks/README.md.
"""

import argparse
import json
from pathlib import Path

import pandas as pd

from crystalformer_rl.evaluation.mp20 import (
    MP20_TEST_FEATURES,
    benchmark_metrics,
    featurize,
    load_mp20_test_features,
)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--split", default="test", choices=["test", "val", "train_subset"])
    parser.add_argument("--output", default=None, help="default: the package's file for the test split")
    parser.add_argument("--cache", default=None, help="default: data/mp20_features/<split>-chunks")
    parser.add_argument("--num-proc", type=int, default=None)
    args = parser.parse_args()
    output = Path(
        args.output or (MP20_TEST_FEATURES if args.split == "test" else f"data/mp20_features/{args.split}.npz")
    )
    frame = pd.read_csv(Path(args.shared) / "data" / "mp20" / f"{args.split}.csv.gz", usecols=["material_id", "cif"])
    features = featurize(
        list(frame.cif), num_proc=args.num_proc, cache_dir=args.cache or f"data/mp20_features/{args.split}-chunks"
    )
    features.save(output, material_id=frame.material_id.to_numpy(dtype=str))
    summary = {
        "split": args.split,
        "crystals": len(features),
        "struct_valid": float(features.struct_valid.mean()),
        "comp_valid": float(features.comp_valid.mean()),
        "with_fingerprint": int(features.has_fingerprint.sum()),
        "output": str(output),
    }
    if args.split != "test":  # the table's "train vs test" row: this split as if it were a model's samples
        summary["against_test"] = benchmark_metrics(features, load_mp20_test_features(), seed=0)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
