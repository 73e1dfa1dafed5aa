"""Round-trip check of the tokenizer on a CIF dataset: decode(encode(s)) vs s with StructureMatcher.

    python scripts/check_tokenizer_roundtrip.py ../shared/data/mp20_biternary/val.csv.gz --num-proc 2

Prints JSON: rows, accepted fraction, matched fraction of accepted, and the rejection reasons by type.
"""

import argparse
import collections
import json
import multiprocessing as mp
import warnings

import pandas as pd
from tqdm import tqdm


def check(args):
    name, cif = args
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from crystalformer_rl.tokenization import CrystalTokenizationError, CrystalTokenizer

    warnings.simplefilter("ignore")
    tokenizer = CrystalTokenizer()
    try:
        tokens = tokenizer.encode(cif, name=name)
    except CrystalTokenizationError as exc:
        return name, "rejected", type(exc).__name__, str(exc)
    try:
        decoded = tokenizer.decode(tokens)
    except CrystalTokenizationError as exc:
        return name, "decode_failed", type(exc).__name__, str(exc)
    matched = StructureMatcher().fit(decoded, Structure.from_str(cif, fmt="cif"))
    return name, "matched" if matched else "mismatched", "", tokens.to_string()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--details", default=None, help="optional CSV with the outcome of every row")
    args = parser.parse_args()
    df = pd.read_csv(args.path)
    if args.limit:
        df = df.iloc[: args.limit]
    names = df["material_id"].astype(str) if "material_id" in df else df.index.astype(str)
    jobs = list(zip(names, df["cif"]))
    with mp.Pool(args.num_proc) as pool:
        results = list(tqdm(pool.imap(check, jobs, chunksize=16), total=len(jobs), desc="round trip"))
    outcome = collections.Counter(r[1] for r in results)
    reasons = collections.Counter(r[2] for r in results if r[1] == "rejected")
    accepted = len(results) - outcome["rejected"]
    report = {
        "dataset": args.path,
        "rows": len(results),
        "accepted": accepted,
        "accepted_fraction": accepted / len(results),
        "matched": outcome["matched"],
        "matched_fraction_of_accepted": outcome["matched"] / max(accepted, 1),
        "decode_failed": outcome["decode_failed"],
        "rejections": dict(reasons),
        "mismatched_examples": [r[0] for r in results if r[1] == "mismatched"][:20],
    }
    if args.details:
        pd.DataFrame(results, columns=["name", "outcome", "error_type", "detail"]).to_csv(args.details, index=False)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
