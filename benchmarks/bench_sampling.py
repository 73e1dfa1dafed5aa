"""Sampling throughput of CrystalFormer: KV-cached vs uncached, at batch 1, 100 and 1000.

Model: the paper's Alex-20 configuration (4,833,575 parameters) with random weights, float32. Space groups are
drawn uniformly from 1..230 (fixed seed). With random weights the number of Wyckoff sites per crystal (which
sets the number of decoding steps) differs from a trained model's; the JSON reports it.

* cached: `model.sample(..., use_cache=True)`: one token per step through per-layer key/value buffers;
  finished crystals leave the batch.
* uncached: `use_cache=False`, the reference algorithm: at every step the full 5 * n_max = 105-token sequence
  of every unfinished crystal goes through the whole model.

Both paths draw the same random numbers, so for the same seed they produce the same crystals and run the same
steps. Uncached sampling is slow, so it is measured directly only at small batch (batch 1, and batch 100
without --quick). Elsewhere its time is extrapolated: a crystal with s sites takes part in 5 s + 1 steps, each
costing one full-sequence forward pass; the cost of one such pass per crystal is measured at the target batch
size (a few timed forward passes of a (batch, 105) sequence) and multiplied by the number of passes the
cached run performed. The JSON marks every extrapolated number.

Peak memory: every measurement runs in a fresh process; `peak_rss_mb` is that process's peak resident memory
(model and libraries included), `baseline_rss_mb` the same process before sampling.

    python benchmarks/bench_sampling.py --quick
    python benchmarks/bench_sampling.py --threads 1 --output results.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _build_model(threads):
    import torch

    if threads:
        torch.set_num_threads(threads)
    from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration

    torch.manual_seed(0)
    model = CrystalFormerForCrystalGeneration(CrystalFormerConfig()).eval()
    return torch, model


def _space_groups(torch, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 231, (batch,), generator=generator)


def _measure_sampling(queue, batch, repeats, use_cache, threads, seed):
    """Child process: sample `repeats` batches of `batch` crystals, report time, sites and memory."""
    torch, model = _build_model(threads)
    model.sample(space_group=[1, 225], seed=0, use_cache=use_cache)  # warm-up (lazy tables, allocator)
    baseline = _peak_rss_mb()
    seconds, sites, passes = 0.0, [], 0
    for repeat in range(repeats):
        groups = _space_groups(torch, batch, seed + repeat)
        start = time.perf_counter()
        out = model.sample(space_group=groups, seed=seed + repeat, use_cache=use_cache)
        seconds += time.perf_counter() - start
        num_sites = out.num_sites
        sites += num_sites.tolist()
        passes += int((5 * num_sites + (num_sites < model.config.n_max).long()).sum())
    queue.put(
        {
            "batch": batch,
            "num_crystals": batch * repeats,
            "seconds": seconds,
            "crystals_per_second": batch * repeats / seconds,
            "mean_sites": sum(sites) / len(sites),
            "max_sites": max(sites),
            "sequence_passes": passes,
            "baseline_rss_mb": round(baseline, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "torch_threads": torch.get_num_threads(),
        }
    )


def _measure_full_pass(queue, batch, repeats, threads):
    """Child process: seconds per crystal of one full 105-token forward pass at this batch size."""
    torch, model = _build_model(threads)
    n_max = model.config.n_max
    groups = _space_groups(torch, batch, 0)
    W = torch.zeros(batch, n_max, dtype=torch.long)
    W[:, 0] = 1
    A = torch.zeros_like(W)
    A[:, 0] = 6
    XYZ = torch.rand(batch, n_max, 3)
    transformer = model.transformer
    with torch.no_grad():

        def one_pass(rows=batch):
            g, w = groups[:rows], W[:rows]
            mult = model.symmetry.mult[g[:, None] - 1, w]
            hidden = transformer(transformer.embed(transformer.g_embed(g - 1), w, A[:rows], XYZ[:rows], mult))
            return model.head(hidden[:, 0])

        one_pass(min(batch, 10))  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            one_pass()
        seconds = (time.perf_counter() - start) / repeats
    queue.put({"batch": batch, "seconds_per_pass": seconds, "seconds_per_crystal_pass": seconds / batch})


def _run(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(queue, *args))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; uncached measured at batch 1 only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    batch_repeats = {1: 5 if args.quick else 20, 100: 1 if args.quick else 3, 1000: 1}
    uncached_direct = {1: 2} if args.quick else {1: 5, 100: 1}  # batch -> repeats, measured directly

    cached = {b: _run(_measure_sampling, b, r, True, args.threads, args.seed) for b, r in batch_repeats.items()}
    uncached = {}
    for batch in batch_repeats:
        if batch in uncached_direct:
            result = _run(_measure_sampling, batch, uncached_direct[batch], False, args.threads, args.seed)
            result["extrapolated"] = False
        else:
            full_pass = _run(_measure_full_pass, batch, 2 if batch <= 100 else 1, args.threads)
            passes = cached[batch]["sequence_passes"]
            seconds = passes * full_pass["seconds_per_crystal_pass"]
            result = {
                "batch": batch,
                "num_crystals": cached[batch]["num_crystals"],
                "seconds": seconds,
                "crystals_per_second": cached[batch]["num_crystals"] / seconds,
                "extrapolated": True,
                "method": "full-sequence passes of the cached run's crystals x measured seconds per crystal-pass "
                f"at batch {batch} ({full_pass['seconds_per_pass']:.3f} s per pass)",
            }
        uncached[batch] = result

    report = {
        "model": "CrystalFormer Alex-20 config, random weights, float32",
        "parameters": 4_833_575,
        "device": "cpu",
        "processor": platform.processor() or platform.machine(),
        "cpu_count": mp.cpu_count(),
        "torch_threads": cached[1]["torch_threads"],
        "quick": args.quick,
        "cached": {str(b): r for b, r in cached.items()},
        "uncached": {str(b): r for b, r in uncached.items()},
        "speedup_cached_over_uncached": {
            str(b): round(cached[b]["crystals_per_second"] / uncached[b]["crystals_per_second"], 1)
            for b in batch_repeats
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
