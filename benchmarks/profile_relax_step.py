"""Where one lockstep relaxation step spends its time, per structure; prints JSON.

    python benchmarks/profile_relax_step.py --samples samples/samples.csv -n 64 --threads 2

One step of `relax_in_lockstep` (materials/relaxation.py) for n generated crystals: pymatgen <-> ASE conversion,
CHGNet's graph building, batching, its forward pass, the one backward pass for forces and stresses, and ASE's
FIRE step on a FrechetCellFilter. Each part is timed ``--repeats`` times on the same structures and reported as
milliseconds per structure, with its share of the step. It tells which part a faster relaxation has to shrink:
batching engines change the conversion, batching and FIRE parts, not the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import torch


def timed(function, repeats: int):
    start = time.perf_counter()
    for _ in range(repeats):
        result = function()
    return (time.perf_counter() - start) / repeats, result


def bf16_autocast_probe(model, batched, graphs, structures, repeats: int) -> dict:
    """CHGNet's forward and backward under bf16 autocast (AMX matrix units on recent Xeons) against float32: the
    time and the error it would bring. Relaxation keeps float32, since the error is far above the 0.01 eV/atom
    that the relaxed energies must match."""

    def run(bf16: bool):
        batch = batched(graphs)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            energy = model._compute(batch, compute_force=False, compute_stress=False)["e"]
        atoms = torch.tensor([len(s) for s in structures], dtype=energy.dtype)
        extensive = energy * atoms if model.is_intensive else energy  # forces are its gradient
        grads = torch.autograd.grad(extensive.sum(), [*batch.atom_positions])
        seconds = time.perf_counter() - start
        return energy.detach().float(), torch.cat(grads).float(), seconds

    run(True)  # warm-up
    runs = {bf16: [run(bf16) for _ in range(repeats)] for bf16 in (False, True)}
    (e32, f32, _), (e16, f16, _) = runs[False][0], runs[True][0]
    per_structure_ms = {bf16: 1000 * np.mean([r[2] for r in rs]) / len(structures) for bf16, rs in runs.items()}
    return {
        "forward_backward_ms_per_structure_float32": round(per_structure_ms[False], 2),
        "forward_backward_ms_per_structure_bf16": round(per_structure_ms[True], 2),
        "energy_error_ev_per_atom_mean": round(float((e32 - e16).abs().mean()), 4),
        "energy_error_ev_per_atom_max": round(float((e32 - e16).abs().max()), 4),
        "force_error_rms_ev_per_a": round(float((f32 - f16).pow(2).mean().sqrt()), 3),
        "force_rms_ev_per_a": round(float(f32.pow(2).mean().sqrt()), 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True, help="a samples table or CIF folder (`crystalformer-rl sample`)")
    parser.add_argument("-n", type=int, default=64, help="structures in the step (one CHGNet batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from bench_relax import generated_structures
    from chgnet.model.model import BatchedGraph
    from pymatgen.io.ase import AseAtomsAdaptor

    from crystalformer_rl.materials.potentials import CHGNetEnergyModel
    from crystalformer_rl.materials.relaxation import _PrecomputedResults

    structures, _ = generated_structures(args.samples, args.n, args.seed)
    energy_model = CHGNetEnergyModel("r2scan", batch_size=len(structures))
    model = energy_model.model
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in structures]

    def batched(graphs):
        return BatchedGraph.from_graphs(
            graphs,
            bond_basis_expansion=model.bond_basis_expansion,
            angle_basis_expansion=model.angle_basis_expansion,
            compute_stress=True,
        )

    times = {}
    times["ase_to_pymatgen"], _ = timed(lambda: [AseAtomsAdaptor.get_structure(a) for a in atoms], args.repeats)
    times["graph_building"], graphs = timed(lambda: [model.graph_converter(s) for s in structures], args.repeats)
    times["batching"], _ = timed(lambda: batched(graphs), args.repeats)
    forward, backward = [], []
    for _ in range(args.repeats):
        batch = batched(graphs)
        start = time.perf_counter()
        energy = model._compute(batch, compute_force=False, compute_stress=False)["e"]
        middle = time.perf_counter()
        torch.autograd.grad(energy.sum(), [*batch.atom_positions, *batch.strains])
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
    times["forward"], times["backward"] = float(np.mean(forward)), float(np.mean(backward))
    bf16 = bf16_autocast_probe(model, batched, graphs, structures, args.repeats)
    efs = energy_model.predict_efs(structures)
    optimizers = []
    for a, (e, f, stress) in zip(atoms, efs):
        a.calc = _PrecomputedResults()
        a.calc.store(a, e, f, stress)
        optimizer = FIRE(FrechetCellFilter(a), logfile=None)
        optimizer.fmax = 0.1
        optimizers.append(optimizer)
    start = time.perf_counter()
    for optimizer in optimizers:
        optimizer.gradient_converged(optimizer.optimizable.get_gradient())
        optimizer.step()
    times["fire_step_with_cell_filter"] = time.perf_counter() - start
    times["predict_efs_as_called"], _ = timed(lambda: energy_model.predict_efs(structures), args.repeats)

    n = len(structures)
    parts = {k: v for k, v in times.items() if k != "predict_efs_as_called"}
    step = sum(parts.values())
    print(
        json.dumps(
            {
                "benchmark": "profile_relax_step",
                "threads": args.threads,
                "structures": n,
                "atoms_per_structure": round(sum(len(s) for s in structures) / n, 1),
                "ms_per_structure": {k: round(1000 * v / n, 2) for k, v in times.items()},
                "share_of_step": {k: round(v / step, 3) for k, v in parts.items()},
                "bf16_autocast_not_used": bf16,
                "torch": torch.__version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
