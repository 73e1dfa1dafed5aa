"""Where w(#elem) comes from: element counts of a model's samples against its training corpus and the MP-20 test
split, overall and per number of Wyckoff sites (does the model overshoot by writing more sites, or by reusing
fewer elements across the sites it writes?). Prints JSON.

    python scripts/element_count_diagnosis.py runs/mp20/new-10k/samples.csv \\
        --corpus crystalformer_rl/data/reference/mp_corpus_test_safe.csv.gz --output docs/benchmarks/x.json
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Composition
from scipy.stats import wasserstein_distance

from crystalformer_rl.tokenization import CrystalTokens
from crystalformer_rl.utils import atomic_write_text


MP20_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp20" / "test.csv.gz"


def n_elements(formulas) -> np.ndarray:
    return np.array([len(Composition(f).elements) for f in formulas])


def describe(name: str, elements: np.ndarray, sites: np.ndarray | None, test: np.ndarray) -> dict:
    record = {
        "crystals": len(elements),
        "mean_elements": round(float(elements.mean()), 3),
        "share_by_elements_1_to_7": np.round(np.bincount(elements, minlength=8)[1:8] / len(elements), 4).tolist(),
        "w_num_elems_vs_mp20_test": round(float(wasserstein_distance(elements, test)), 4),
    }
    if sites is not None:
        record["mean_sites"] = round(float(sites.mean()), 2)
        record["mean_elements_by_sites"] = {
            int(k): round(float(elements[sites == k].mean()), 2) for k in range(1, 21) if (sites == k).sum() >= 20
        }
    return {name: record}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", help="samples.csv of `crystalformer-rl sample` (formula, num_sites)")
    parser.add_argument("--corpus", required=True, help="the model's reference corpus (id, reduced_formula, tokens)")
    parser.add_argument("--test", default=str(MP20_TEST), help="MP-20 test split (reduced_formula)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    test = n_elements(pd.read_csv(args.test, usecols=["reduced_formula"]).reduced_formula)
    corpus = pd.read_csv(args.corpus)
    corpus_sites = np.array([int((np.asarray(CrystalTokens.from_string(t).A) > 0).sum()) for t in corpus.tokens])
    samples = pd.read_csv(args.samples).dropna(subset=["formula"])
    report = {"samples_file": args.samples, "corpus_file": args.corpus}
    report |= describe("mp20_test", test, None, test)
    report |= describe("corpus", n_elements(corpus.reduced_formula), corpus_sites, test)
    report |= describe("samples", n_elements(samples.formula), samples.num_sites.to_numpy(), test)
    text = json.dumps(report, indent=1)
    if args.output:
        atomic_write_text(text + "\n", args.output)
    print(text)
    return report


if __name__ == "__main__":
    main()
