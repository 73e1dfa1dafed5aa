"""Relaxation throughput: all structures in lockstep with batched CHGNet calls vs one by one; prints JSON.

    python benchmarks/bench_relax.py --samples samples/samples.csv -n 1000 --one-by-one 40

Both paths are ASE FIRE on a FrechetCellFilter with the reference's settings (fmax 0.1 eV/Å, at most 500 steps)
and CHGNet (the E_hull reward's r2SCAN model). The one-by-one path runs on the first ``--one-by-one`` of the
structures; the batched path on those alone (the like-for-like speedup) and on all ``-n`` (the throughput at
scale), and its energies on the common structures are compared with the one-by-one ones (eV/atom). The structures are a random draw (``--seed``) of the samples that can be built.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import torch


def generated_structures(samples: str, n: int, seed: int):
    """n structures and their names, in random order (seed), from a samples table or CIF folder; unbuildable rows
    dropped."""
    from crystalformer_rl.materials.io import load_crystals

    loaded = load_crystals(samples, progress=False)
    built = [(s, name) for s, name in zip(loaded.structures, loaded.names) if s is not None]
    order = np.random.default_rng(seed).permutation(len(built))[:n]
    return [built[i][0] for i in order], [built[i][1] for i in order]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True, help="a samples table or CIF folder (`crystalformer-rl sample`)")
    parser.add_argument("-n", type=int, default=1000, help="structures relaxed in lockstep")
    parser.add_argument("--one-by-one", type=int, default=40, help="structures also relaxed one by one")
    parser.add_argument("--chunk", type=int, default=64, help="structures per lockstep group")
    parser.add_argument("--batch-size", type=int, default=64, help="structures per CHGNet forward pass")
    parser.add_argument("--fmax", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())),
        help="torch threads (default: OMP_NUM_THREADS, else every core). Two relaxations side by side at 2 threads "
        "each ran about 3x slower than at 1 thread each on this 2-core machine",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--primitive",
        action="store_true",
        help="relax each crystal's primitive cell, both ways (`evaluate --relax_primitive`); energies per atom of "
        "that cell",
    )
    parser.add_argument(
        "--save",
        help="also write the batched results (name, relaxed_cif, energy, reason) to this CSV: "
        "`crystalformer-rl evaluate FILE --column relaxed_cif` then judges the relaxed crystals",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from crystalformer_rl.materials import CHGNetEnergyModel, relax_structure
    from crystalformer_rl.materials.relaxation import primitive_cell, relax_structures

    structures, names = generated_structures(args.samples, args.n, args.seed)
    sampled_atoms = sum(len(s) for s in structures)
    if args.primitive:
        structures = [primitive_cell(s) for s in structures]
    model = CHGNetEnergyModel("r2scan", batch_size=args.batch_size)

    def relax_fn(chunk, on_done=None):
        return model.relax_many(chunk, fmax=args.fmax, steps=args.steps, on_done=on_done)

    relax_fn.batched = True
    subset = structures[: args.one_by_one]
    start = time.perf_counter()  # the batched path on the one-by-one subset alone: the like-for-like speedup
    relax_structures(subset, relax_fn, chunk_size=args.chunk, progress=False)
    subset_batched_seconds = time.perf_counter() - start
    start = time.perf_counter()
    relaxed, energies, reasons = relax_structures(structures, relax_fn, chunk_size=args.chunk)
    batched_seconds = time.perf_counter() - start
    if args.save:
        import pandas as pd

        from crystalformer_rl.utils import atomic_write_table

        frame = pd.DataFrame(
            {
                "name": names,
                "relaxed_cif": [None if r is None else r.to(fmt="cif") for r in relaxed],
                "energy_relaxed": energies,
                "relax_reason": reasons,
            }
        )
        atomic_write_table(frame, args.save)

    one, one_energies, start = [], [], time.perf_counter()
    calculator = model.ase_calculator()
    for s in subset:
        try:
            result = relax_structure(s, calculator, fmax=args.fmax, steps=args.steps)
            one.append(result)
            one_energies.append(result.energy)
        except Exception:
            one.append(None)
            one_energies.append(None)
    one_seconds = time.perf_counter() - start
    diffs = [
        abs(b - o) / len(s)
        for b, o, s in zip(energies[: len(subset)], one_energies, subset)
        if b is not None and o is not None
    ]
    per_batched = batched_seconds / len(structures)
    per_one = one_seconds / max(len(subset), 1)
    print(
        json.dumps(
            {
                "benchmark": "relax",
                "model": model.name,
                "threads": torch.get_num_threads(),
                "cores": os.cpu_count(),
                "fmax": args.fmax,
                "max_steps": args.steps,
                "primitive": args.primitive,
                "atoms_per_structure": round(sum(len(s) for s in structures) / len(structures), 2),
                "atoms_per_structure_as_sampled": round(sampled_atoms / len(structures), 2),
                "batched": {
                    "structures": len(structures),
                    "seconds": round(batched_seconds, 1),
                    "seconds_per_structure": round(per_batched, 3),
                    "failed": int(sum(r is None for r in relaxed)),
                    "projected_minutes_for_1000": round(per_batched * 1000 / 60, 1),
                },
                "one_by_one": {
                    "structures": len(subset),
                    "seconds": round(one_seconds, 1),
                    "seconds_per_structure": round(per_one, 3) if subset else None,
                    "projected_minutes_for_1000": round(per_one * 1000 / 60, 1) if subset else None,
                },
                "batched_same_subset_seconds": round(subset_batched_seconds, 1),
                # no one-by-one subset (--one-by-one 0): nothing to compare, so no speedup
                "speedup_same_subset": round(one_seconds / subset_batched_seconds, 2) if subset else None,
                "speedup_per_structure_all": round(per_one / per_batched, 2) if subset else None,
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "energy_agreement_ev_per_atom": {
                    "compared": len(diffs),
                    "max_abs": float(np.max(diffs)) if diffs else None,
                    "median_abs": float(np.median(diffs)) if diffs else None,
                    "within_0.01": int(sum(d <= 0.01 for d in diffs)),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
