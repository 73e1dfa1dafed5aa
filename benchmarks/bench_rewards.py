"""Throughput of the reward models on this machine: structures/second, batched vs one at a time; prints JSON.

Measures CHGNet (r2SCAN) energies, hull look-ups (cold: lower hulls built; warm: cached), band gap,
dielectric constant and the full default E_hull reward. Uses MP-20 rows from ``../shared`` when present,
otherwise simple generated structures.

    python benchmarks/bench_rewards.py [--n 64] [--threads 2] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from pymatgen.core import Lattice, Structure

from crystalformer_rl.reward_models import (
    BandGapReward,
    CHGNetEnergyModel,
    DielectricReward,
    EhullReward,
    ReferenceHull,
)


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def sample_structures(n: int) -> tuple[list[Structure], str]:
    path = SHARED / "mp20_biternary" / "test.csv.gz"
    if path.exists():
        import pandas as pd

        df = pd.read_csv(path).sample(n, random_state=0)
        return [Structure.from_str(c, fmt="cif") for c in df["cif"]], "mp20_biternary/test"
    pairs = [("Na", "Cl"), ("Mg", "O"), ("Li", "F"), ("K", "Br"), ("Ca", "S"), ("Sr", "Se"), ("Ba", "Te"), ("Rb", "I")]
    out = []
    for i in range(n):
        a, b = pairs[i % len(pairs)]
        lat = Lattice.cubic(5.0 + 0.05 * (i // len(pairs)))
        out.append(Structure.from_spacegroup("Fm-3m", lat, [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    return out, "generated rocksalts"


def rate(fn: Callable[[], object], n: int, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    structures, source = sample_structures(args.n)
    n = len(structures)
    res: dict = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "structures": {"source": source, "n": n, "mean_atoms": sum(len(s) for s in structures) / n},
        "structures_per_second": {},
    }
    sps = res["structures_per_second"]

    chgnet = CHGNetEnergyModel("r2scan", batch_size=16)
    chgnet.predict_energies(structures[:4])  # warm-up
    sps["chgnet_energy_batched16"] = rate(lambda: chgnet.predict_energies(structures), n, repeat=3)
    sps["chgnet_energy_one_at_a_time"] = rate(lambda: [chgnet.predict_energies([s]) for s in structures], n, repeat=2)
    energies = chgnet.predict_energies(structures)

    hull = ReferenceHull.default()
    comps = [s.composition for s in structures]

    def lookups() -> None:
        # the cost is the same on either scale; energies are r2SCAN ones for all, which is fine for timing
        for c, e in zip(comps, energies):
            scale = hull.preferred_scale(c)
            if scale is not None:
                hull.e_above_hull(c, e, scale=scale)

    hull.clear_cache()
    sps["hull_lookup_cold"] = rate(lookups, n)
    sps["hull_lookup_warm"] = rate(lookups, n, repeat=3)

    gap_b = BandGapReward(cache_size=0)
    gap_1 = BandGapReward(cache_size=0, batch_size=1)
    gap_b.compute(structures[:4])
    sps["band_gap_batched64"] = rate(lambda: gap_b.compute(structures), n, repeat=3)
    sps["band_gap_one_at_a_time"] = rate(lambda: [gap_1.compute([s]) for s in structures], n, repeat=2)

    diel = DielectricReward(band_gap=BandGapReward(cache_size=0), cache_size=0)
    diel.compute(structures[:4])
    sps["dielectric_batched"] = rate(lambda: diel.compute(structures), n, repeat=3)
    sps["dielectric_one_at_a_time"] = rate(lambda: [diel.compute([s]) for s in structures], n, repeat=2)

    ehull = EhullReward(cache_size=0)
    ehull.compute(structures[:4])
    hull.clear_cache()
    sps["ehull_reward_end_to_end_cold_hull"] = rate(lambda: ehull.compute(structures), n)
    sps["ehull_reward_end_to_end_warm_hull"] = rate(lambda: ehull.compute(structures), n, repeat=3)

    per = 1.0 / sps["chgnet_energy_batched16"]
    res["hull_lookup_cost_vs_chgnet_batched"] = {
        "cold": (1.0 / sps["hull_lookup_cold"]) / per,
        "warm": (1.0 / sps["hull_lookup_warm"]) / per,
    }
    res["ms_per_structure"] = {k: 1000.0 / v for k, v in sps.items()}
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
