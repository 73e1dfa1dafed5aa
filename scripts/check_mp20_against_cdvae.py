"""Check `crystalformer-rl benchmark` against CDVAE's own metric code, run in a scratch environment.

CDVAE's ``scripts/compute_metrics.py`` (``Crystal``, ``GenEval``) and ``scripts/eval_utils.py`` (``smact_validity``,
``structure_validity``, ``compute_cov``, ``CompScaler``) are imported from a CDVAE checkout, unmodified; nothing of
them is vendored here. Their heavy imports that the metrics never call (hydra, torch_geometric, torch_scatter,
p_tqdm, CDVAE's data modules) are stubbed. CDVAE pinned smact 2.2.1 and matminer 0.7.3; the scratch environment
used smact 2.2.1 and matminer 0.9.3 (0.7.3 no longer imports with today's pymatgen; 0.9.3's magpie features do
not impute NaN, like 0.7.3's)::

    python -m venv --system-site-packages /tmp/cdvae-env
    /tmp/cdvae-env/bin/pip install --no-deps smact==2.2.1 matminer==0.9.3
    git clone https://github.com/txie-93/cdvae /tmp/cdvae-src
    /tmp/cdvae-env/bin/python scripts/check_mp20_against_cdvae.py --cdvae /tmp/cdvae-src \\
        --samples samples/samples.csv --benchmark bench --check 1000 --check-test 500

Validity is recomputed by CDVAE's functions for every crystal. CrystalNN fingerprints are the slow part (about
0.2 s a crystal), so CDVAE's ``Crystal`` recomputes them for a random ``--check`` samples and ``--check-test`` test
crystals and they are compared with the benchmark's; the coverage and Wasserstein distances of all crystals are then
computed by CDVAE's ``GenEval`` from the benchmark's fingerprints. A sample that did not decode is given to CDVAE as
a one-atom cell with negative lengths (CDVAE's "non_positive_lattice": structurally invalid); CDVAE then judges its
composition (valid: a single element) where the benchmark counts it invalid, so the composition validity may
differ by up to the share of undecodable samples (reported). Prints JSON: CDVAE's numbers beside ours.
"""

import argparse
import json
import signal
import sys
import types
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


def stub_modules():
    """Empty stand-ins for CDVAE's imports that its metric code never calls."""
    names = [
        "hydra",
        "hydra.experimental",
        "torch_geometric",
        "torch_geometric.data",
        "torch_scatter",
        "p_tqdm",
        "cdvae.pl_data",
        "cdvae.pl_data.dataset",
        "cdvae.pl_data.datamodule",
    ]
    for name in names:
        module = types.ModuleType(name)
        for attr in ("compose", "initialize_config_dir", "DataLoader", "scatter", "p_map", "p_umap"):
            setattr(module, attr, None)
        module.TensorCrystDataset = module.worker_init_fn = None
        sys.modules[name] = module


def crystal_arrays(structure):
    if structure is None:  # did not build: CDVAE's "non_positive_lattice" path
        return {
            "frac_coords": np.zeros((1, 3)),
            "atom_types": np.array([1]),
            "lengths": -np.ones(3),
            "angles": 90 * np.ones(3),
        }
    return {
        "frac_coords": structure.frac_coords,
        "atom_types": np.array([site.specie.Z for site in structure]),
        "lengths": np.array(structure.lattice.abc),
        "angles": np.array(structure.lattice.angles),
    }


class TimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise TimedOut


def light_crystal(Crystal, arrays, structure_fp, composition_fp, ours=None, timeout=10):
    """CDVAE's ``Crystal`` with its own structure, composition and validity steps, and the given fingerprints in
    place of ``get_fingerprints`` (which would recompute them): a failed fingerprint makes it invalid, as there.

    CDVAE's ``smact_validity`` loops over every combination of oxidation states, which does not end for some
    many-element samples: after ``timeout`` seconds the benchmark's own verdict ``ours`` (struct, comp) is used and
    the crystal is flagged ``timed_out``."""
    crystal = Crystal.__new__(Crystal)
    crystal.frac_coords, crystal.atom_types = arrays["frac_coords"], arrays["atom_types"]
    crystal.lengths, crystal.angles, crystal.dict = arrays["lengths"], arrays["angles"], arrays
    try:
        crystal.get_structure()
    except AttributeError:  # CDVAE reads .structure after a failed build
        crystal.constructed = False
    crystal.get_composition()
    crystal.timed_out = False
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        crystal.get_validity()
    except TimedOut:
        crystal.timed_out = True
        crystal.struct_valid, crystal.comp_valid = ours
        crystal.valid = crystal.struct_valid and crystal.comp_valid
    finally:
        signal.alarm(0)
    if np.isnan(structure_fp).any():
        crystal.valid, crystal.struct_fp, crystal.comp_fp = False, None, None
    else:
        crystal.struct_fp, crystal.comp_fp = structure_fp, composition_fp
    return crystal


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cdvae", required=True, help="a CDVAE checkout (its scripts/ and cdvae/common/)")
    parser.add_argument("--samples", required=True, help="the benchmark's input (samples.csv with tokens or cif)")
    parser.add_argument("--benchmark", required=True, help="the benchmark's output folder (fingerprints/, json)")
    parser.add_argument(
        "--test", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/mp20/test.csv.gz")
    )
    parser.add_argument("--check", type=int, default=1000, help="samples whose fingerprints CDVAE recomputes")
    parser.add_argument("--check-test", type=int, default=500, help="test crystals whose fingerprints it recomputes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    sys.path[:0] = [str(Path(args.cdvae) / "scripts"), str(Path(args.cdvae))]
    stub_modules()
    import compute_metrics as cdvae  # noqa: E402  (CDVAE's module, unmodified)

    from crystalformer_rl.evaluation.mp20 import CrystalFeatures, load_mp20_test_features, validity
    from crystalformer_rl.materials.io import load_crystals

    ours = json.loads((Path(args.benchmark) / "benchmark_mp20.json").read_text())
    loaded = load_crystals(args.samples, progress=True)
    chunks = sorted((Path(args.benchmark) / "fingerprints").glob("chunk-*.npz"))
    features = CrystalFeatures.concatenate([CrystalFeatures.load(c) for c in chunks])
    features.struct_valid, features.comp_valid = validity(loaded.structures)  # as the benchmark: today's rules
    test_features = load_mp20_test_features()
    test_structures = load_crystals(args.test, progress=True).structures
    assert len(features) == len(loaded) and len(test_features) == len(test_structures)

    rng = np.random.default_rng(args.seed)
    report = {
        "samples": len(loaded),
        "test": len(test_structures),
        "samples_not_decoded": sum(s is None for s in loaded.structures),
    }
    for name, structures, feats, n in (
        ("samples", loaded.structures, features, args.check),
        ("test", test_structures, test_features, args.check_test),
    ):
        built = [i for i, s in enumerate(structures) if s is not None and not np.isnan(feats.structure_fp[i]).any()]
        picked = rng.choice(built, size=min(n, len(built)), replace=False)
        struct_diff = comp_diff = 0.0
        for i in tqdm(picked, desc=f"CDVAE fingerprints ({name})"):
            signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(60)
            try:
                crystal = cdvae.Crystal(crystal_arrays(structures[i]))
            except TimedOut:  # its validity loop, not the fingerprints: skip it
                report[f"fingerprint_check_skipped_{name}"] = report.get(f"fingerprint_check_skipped_{name}", 0) + 1
                continue
            finally:
                signal.alarm(0)
            struct_diff = max(struct_diff, float(np.nanmax(np.abs(crystal.struct_fp - feats.structure_fp[i]))))
            comp = np.asarray(crystal.comp_fp, dtype=float)
            same_nan = np.array_equal(np.isnan(comp), np.isnan(feats.composition_fp[i]))
            comp_diff = max(
                comp_diff, float(np.nanmax(np.abs(comp - feats.composition_fp[i]))) if same_nan else np.inf
            )
        report[f"fingerprints_recomputed_{name}"] = len(picked)
        report[f"max_abs_diff_structure_fp_{name}"] = struct_diff
        report[f"max_abs_diff_composition_fp_{name}"] = comp_diff

    def crystals(structures, feats, desc):
        return [
            light_crystal(
                cdvae.Crystal,
                crystal_arrays(s),
                feats.structure_fp[i],
                feats.composition_fp[i],
                ours=(bool(feats.struct_valid[i]), bool(feats.comp_valid[i])),
            )
            for i, s in enumerate(tqdm(structures, desc=desc))
        ]

    pred = crystals(loaded.structures, features, "CDVAE validity (samples)")
    gt = crystals(test_structures, test_features, "CDVAE validity (test)")
    np.random.seed(args.seed)
    geneval = cdvae.GenEval(pred, gt, n_samples=ours["wasserstein_samples"], eval_model_name="mp20")
    theirs = {**geneval.get_validity(), **geneval.get_density_wdist(), **geneval.get_num_elem_wdist()}
    theirs.update(geneval.get_coverage())
    # the same 1,000 valid crystals as ours (a seeded default_rng draw): the Wasserstein functions compared exactly
    valid = np.flatnonzero([c.valid for c in pred])
    pick = np.random.default_rng(args.seed).choice(
        np.flatnonzero(features.valid), ours["wasserstein_samples"], replace=False
    )
    geneval.valid_samples = [pred[i] for i in pick]
    same_draw = {**geneval.get_density_wdist(), **geneval.get_num_elem_wdist()}
    pairs = {
        "struct_valid": (100 * theirs["struct_valid"], ours["struct_valid"]),
        "comp_valid": (100 * theirs["comp_valid"], ours["comp_valid"]),
        "valid": (100 * theirs["valid"], ours["valid"]),
        "cov_recall": (100 * theirs["cov_recall"], ours["cov_recall"]),
        "cov_precision": (100 * theirs["cov_precision"], ours["cov_precision"]),
        "wdist_density (CDVAE's own draw)": (theirs["wdist_density"], ours["wdist_density"]),
        "wdist_num_elems (CDVAE's own draw)": (theirs["wdist_num_elems"], ours["wdist_num_elems"]),
        "wdist_density (our draw)": (same_draw["wdist_density"], ours["wdist_density"]),
        "wdist_num_elems (our draw)": (same_draw["wdist_num_elems"], ours["wdist_num_elems"]),
    }
    report["cdvae_valid_crystals"] = int(len(valid))
    report["cdvae_validity_timed_out"] = int(sum(c.timed_out for c in pred + gt))
    report["metrics"] = {k: {"cdvae": v[0], "ours": v[1], "difference": v[1] - v[0]} for k, v in pairs.items()}
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
