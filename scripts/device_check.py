"""One prepared device check (issue 12): the CUDA-capable tests, sampling and pretraining throughput, and RL with
exact kill-and-resume under ``accelerate launch`` and DeepSpeed ZeRO-2; prints JSON and writes it atomically.

    python scripts/device_check.py                                   # a GPU machine, <= 8 minutes on one GPU
    python scripts/device_check.py --output "$OUT/device_nvidia-h200.json"
    python scripts/device_check.py --cpu --output /tmp/device_check_cpu.json   # CI: tiny runs, a few CPU minutes

Sections (each records its own result or error; the exit status is 1 if any failed, 2 without CUDA and --cpu):

* ``tests``: pytest on the CUDA-capable subset (``--pytest-args``), counted from its JUnit XML. Errors of tests
  whose ``shared`` fixture finds no ``../shared`` data (it does not travel to a device machine) are counted apart.
* ``sampling``: crystals/s of ``model.sample`` for the paper configuration (``CrystalFormerConfig()`` defaults,
  4.8M parameters, random weights) at batch 1,000 in float32, TF32 and bf16 autocast, and on the CPU at a small
  batch beside it; each variant also scores its samples with ``log_prob`` (sampler vs likelihood, and each
  precision against float32).
* ``pretraining``: crystals/s through ``CrystalPretrainer`` (project defaults) for the paper configuration at
  batch 1,000 on real Materials Project crystals (the corpus shipped in the package), float32 and bf16; the timing
  reuses ``benchmarks/bench_train.py``'s step clock and model sizes.
* ``rl_accelerate`` / ``rl_deepspeed_zero2``: ``crystalformer-rl rl`` for 6 optimizer steps (two sampled batches,
  μ = 3) under ``accelerate launch`` with ``configs/accelerate/single_gpu.yaml`` / ``deepspeed_zero2.yaml`` on one
  process, with a cheap deterministic reward (this module's ``mean_atomic_number``). A straight run, and beside it a
  run SIGKILLed once its checkpoint-3 is complete, then resumed from it to step 6: both must end on the same
  parameters (safetensors) and EMA baseline.

``--cpu``: everything on the CPU and shorter (paper-config sampling / pretraining at small batches, an ``xs``
policy for RL, no DeepSpeed, which does not run on the CPU through accelerate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("tests", "sampling", "pretraining", "rl_accelerate", "rl_deepspeed_zero2")
PROMPTS = "1,2,12,14,62,139,166,194,225"
RL_STEPS, RL_KILL_AT = 6, 3
ACCELERATE_CONFIGS = {
    "rl_accelerate": "configs/accelerate/single_gpu.yaml",
    "rl_deepspeed_zero2": "configs/accelerate/deepspeed_zero2.yaml",
}
# The tests that can meet a GPU: the model and sampler, the trainers' device options, the device rule (its model
# tests assert that "auto" lands where `resolve_device("auto")` says, the GPU here).
GPU_TESTS = (
    "tests/test_modeling_crystalformer.py tests/test_sampling.py tests/test_trainer_precision.py "
    "tests/test_devices.py -m 'not slow'"
)
CPU_TESTS = "tests/test_trainer_precision.py"  # CI runs the whole suite anyway: keep this short


def mean_atomic_number(prompts=None, completions=None, **kwargs):
    """The RL runs' reward (``--rewards device_check:mean_atomic_number``): the mean atomic number of the Wyckoff
    sites over 118. Cheap and deterministic, so the check is about the machinery, not a potential. It varies
    between any two crystals, so the parameters must move. (The anion fraction used before was 0 for every crystal
    that a freshly initialised policy drew on one machine, so nothing moved.)"""
    import numpy as np

    return [float(np.mean(c.A[: c.num_sites]) / 118) if c.num_sites else None for c in completions]


@dataclass
class Plan:
    """Sizes of one mode: the GPU check fits in 8 minutes, the CPU one in a few on 2 cores."""

    sample_batch: int
    sample_repeats: int
    sample_precisions: tuple[str, ...]
    cpu_sample_batch: int  # the CPU figure beside the GPU one (GPU mode)
    pretrain_size: str
    pretrain_batch: int
    pretrain_steps: int
    pretrain_warmup: int
    pretrain_rows: int
    pretrain_precisions: tuple[str, ...]
    rl_model_size: str
    rl_batch: int
    run_timeout_s: int
    tests_timeout_s: int
    budget_s: int


GPU_PLAN = Plan(
    sample_batch=1000,
    sample_repeats=2,
    sample_precisions=("fp32", "tf32", "bf16"),
    cpu_sample_batch=100,
    pretrain_size="paper",
    pretrain_batch=1000,
    pretrain_steps=30,
    pretrain_warmup=5,
    pretrain_rows=6000,
    pretrain_precisions=("fp32", "bf16"),
    rl_model_size="paper",
    rl_batch=100,
    run_timeout_s=240,
    tests_timeout_s=180,
    budget_s=480,
)
CPU_PLAN = Plan(
    sample_batch=32,
    sample_repeats=1,
    sample_precisions=("fp32", "bf16"),
    cpu_sample_batch=32,
    pretrain_size="paper",
    pretrain_batch=16,
    pretrain_steps=4,
    pretrain_warmup=1,
    pretrain_rows=256,
    pretrain_precisions=("fp32", "bf16"),
    rl_model_size="xs",
    rl_batch=8,
    run_timeout_s=300,
    tests_timeout_s=240,
    budget_s=900,
)


# --------------------------------------------------------------------------------------------------- helpers
def attempt(fn, *args, **kwargs) -> dict:
    """``fn(...)``'s result dict with ``ok`` (default True), or the error it raised: the check goes on."""
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # every failure is a result here
        error = f"{type(exc).__name__}: {exc}"[:2000]
        return {"ok": False, "error": error, "traceback": traceback.format_exc()[-3000:]}
    result.setdefault("ok", True)
    return result


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child_env(single_thread: bool = False) -> dict[str, str]:
    """The environment of the check's subprocesses: offline, unbuffered, this module importable (the reward)."""
    env = dict(os.environ)
    paths = [str(REPO / "scripts"), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if single_thread:  # two runs side by side on a small CPU
        env["OMP_NUM_THREADS"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    proc: subprocess.Popen
    log_path: Path
    log: object
    started: float

    def tail(self, chars: int = 2500) -> str:
        if not self.log.closed:
            self.log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-chars:]


def start(command: list[str], log_path: Path, env: dict[str, str]) -> Run:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")  # closed by finish() or the caller
    log.write("$ " + shlex.join(command) + "\n")
    log.flush()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    return Run(proc, log_path, log, time.perf_counter())


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            parent = int(Path("/proc", entry, "stat").read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_tree(run: Run) -> None:
    """SIGKILL a run and every process it started (torchrun's workers sit in their own sessions, so a process
    group kill would miss them), by their ids; wait until they are gone."""
    children, pids, stack = _children(), [], [run.proc.pid]
    while stack:
        for child in children.get(stack.pop(), []):
            pids.append(child)
            stack.append(child)
    for pid in [run.proc.pid, *pids]:  # the launcher first, so it cannot restart a worker
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    run.proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)


def finish(run: Run, timeout: float) -> int | None:
    """The run's exit status, or None after killing it at the timeout."""
    try:
        returncode = run.proc.wait(timeout=max(timeout - (time.perf_counter() - run.started), 1))
    except subprocess.TimeoutExpired:
        kill_tree(run)
        returncode = None
    run.log.close()
    return returncode


# ----------------------------------------------------------------------------------------------- environment
def environment(device) -> dict:
    from importlib import metadata

    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    for name in ("transformers", "trl", "accelerate", "datasets", "deepspeed", "safetensors"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            info["git_dirty"] = bool(dirty.stdout.strip())
    return info


# ----------------------------------------------------------------------------------------------------- tests
def parse_junit(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "errors_missing_shared_data": 0}
    problems = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = {child.tag: child for child in case}
        test_id = f"{case.get('classname')}::{case.get('name')}"
        bad = outcome.get("failure") if "failure" in outcome else outcome.get("error")
        if bad is not None:
            text = (bad.get("message") or bad.text or "").strip()
            message = text.splitlines()[0][:300] if text else bad.tag
            counts["failed" if bad.tag == "failure" else "errors"] += 1
            if bad.tag == "error" and "read real data from" in text:  # conftest's `shared` fixture
                counts["errors_missing_shared_data"] += 1
            problems.append(f"{test_id}: {message}")
        elif "skipped" in outcome:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "problems": problems[:30]}


def tests_section(pytest_args: list[str], timeout: float, workdir: Path) -> dict:
    junit = workdir / "pytest.xml"
    command = [sys.executable, "-m", "pytest", *pytest_args, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    run = start(command, workdir / "pytest.log", child_env())
    returncode = finish(run, timeout)
    result = {"command": shlex.join(["python", *command[1:-1]]), "returncode": returncode}
    if returncode is None:
        return {**result, "ok": False, "error": f"pytest ran past {timeout:.0f} s", "log_tail": run.tail()}
    if not junit.exists():
        return {**result, "ok": False, "error": "pytest wrote no JUnit XML", "log_tail": run.tail()}
    counts = parse_junit(junit)
    real_errors = counts["errors"] - counts["errors_missing_shared_data"]
    ok = counts["passed"] > 0 and counts["failed"] == 0 and real_errors == 0
    result.update(counts, ok=ok)
    if not ok:
        result["log_tail"] = run.tail()
    return result


# -------------------------------------------------------------------------------------------------- sampling
@contextlib.contextmanager
def precision(name: str, device_type: str):
    """'fp32': full float32; 'tf32': TF32 matrix products (CUDA); 'bf16': bf16 autocast."""
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()
    try:
        with autocast:
            yield
    finally:
        torch.set_float32_matmul_precision(before)


def paper_model(device):
    import torch

    from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration

    torch.manual_seed(0)
    return CrystalFormerForCrystalGeneration(CrystalFormerConfig()).to(device).eval()


def _relative(a, b):
    """max |a - b| / (1 + |b|) over the entries where both are finite (log-likelihoods are sums of ~100 terms)."""
    import torch

    finite = torch.isfinite(a) & torch.isfinite(b)
    if not bool(finite.any()):
        return math.nan
    return float(((a - b).abs() / (1 + b.abs()))[finite].max())


def time_sampling(model, device, batch: int, repeats: int, name: str) -> dict:
    """Crystals/s of ``model.sample`` under a precision; its samples scored by ``log_prob`` under it and in fp32."""
    import torch

    groups = torch.randint(1, 231, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    seconds = 0.0
    with torch.no_grad(), precision(name, device.type):
        model.sample(space_group=groups[: min(batch, 16)], seed=0)  # warm-up: CUDA context, kernels, allocator
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sites = []
        for repeat in range(repeats):
            start_time = time.perf_counter()
            out = model.sample(space_group=groups, seed=1 + repeat)
            synchronize(device)
            seconds += time.perf_counter() - start_time
            sites += out.num_sites.tolist()
        tokens = {k: getattr(out, k) for k in ("G", "W", "A", "XYZ", "L")}
        logp_here = model.log_prob(**tokens, output_logits=False).logp.float()
    with torch.no_grad(), precision("fp32", device.type):
        logp_fp32 = model.log_prob(**tokens, output_logits=False).logp.float()
    sampler_logp = out.logp.float()
    result = {
        "batch": batch,
        "repeats": repeats,
        "crystals_per_s": round(batch * repeats / seconds, 1),
        "seconds": round(seconds, 3),
        "mean_sites": round(sum(sites) / len(sites), 2),
        "finite_logp_fraction": float(torch.isfinite(sampler_logp).float().mean()),
        "sampler_vs_log_prob_max_rel_diff": _relative(sampler_logp, logp_here),
    }
    if name != "fp32":
        result["log_prob_vs_fp32_max_rel_diff"] = _relative(logp_here, logp_fp32)
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    # float32 must reproduce the sampler's own log-likelihoods; the other precisions are reported, not judged.
    result["ok"] = result["finite_logp_fraction"] == 1.0 and (
        name != "fp32" or result["sampler_vs_log_prob_max_rel_diff"] <= 1e-4
    )
    return result


def sampling_section(plan: Plan, device) -> dict:
    import torch

    model = paper_model(device)
    result = {
        "model": "paper configuration (CrystalFormerConfig defaults), random weights, KV-cached sampler",
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "note": "random weights: the number of sites per crystal (decoding steps) differs from a trained model's",
        "variants": {},
    }
    for name in plan.sample_precisions:
        result["variants"][name] = attempt(time_sampling, model, device, plan.sample_batch, plan.sample_repeats, name)
    ok = all(v["ok"] for v in result["variants"].values())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
        cpu = torch.device("cpu")
        result["cpu"] = attempt(lambda: time_sampling(paper_model(cpu), cpu, plan.cpu_sample_batch, 1, "fp32"))
        ok = ok and result["cpu"]["ok"]
        gpu, host = result["variants"].get("fp32", {}), result["cpu"]
        if "crystals_per_s" in gpu and "crystals_per_s" in host:
            result["fp32_speedup_over_cpu"] = round(gpu["crystals_per_s"] / host["crystals_per_s"], 1)
    result["ok"] = ok
    return result


# ----------------------------------------------------------------------------------------------- pretraining
def bench_train():
    """``benchmarks/bench_train.py`` (the project's training timer: step clock, model sizes)."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_train as module

    return module


def real_rows(n: int, seed: int = 0) -> tuple[list[dict], dict]:
    """n real Materials Project crystals as dataset rows: the training corpus shipped with the package (present on
    every machine, unlike ``data/corpus`` or ``../shared``)."""
    import pandas as pd

    from crystalformer_rl.pretrained import SHIPPED_REFERENCE
    from crystalformer_rl.tokenization import CrystalTokens

    frame = pd.read_csv(SHIPPED_REFERENCE, usecols=["tokens"])
    frame = frame.sample(n=min(n, len(frame)), random_state=seed)
    rows, unparsed = [], 0
    for text in frame["tokens"]:
        try:
            row = CrystalTokens.from_string(text).as_dict()
        except ValueError:
            unparsed += 1
            continue
        rows.append({**row, "num_sites": len(row["W"])})
    try:
        source = str(SHIPPED_REFERENCE.relative_to(REPO))
    except ValueError:  # an installed (not editable) package
        source = str(SHIPPED_REFERENCE)
    return rows, {"source": source, "rows": len(rows), "unparsed": unparsed}


def time_pretraining(bench, rows, device, plan: Plan, bf16: bool, output_dir: Path) -> dict:
    import torch
    from datasets import Dataset

    from crystalformer_rl.trainers import CrystalPretrainConfig, CrystalPretrainer

    class SyncedClock(bench.StepClock):
        """bench_train's clock, after the GPU has finished the step."""

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            return super().on_step_end(args, state, control, **kwargs)

    model = bench.make_model(plan.pretrain_size)
    args = CrystalPretrainConfig(
        output_dir=str(output_dir),
        max_steps=plan.pretrain_steps,
        per_device_train_batch_size=plan.pretrain_batch,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=plan.pretrain_steps,
        report_to="none",
        disable_tqdm=True,
        use_cpu=device.type == "cpu",
        bf16=bf16,
        seed=0,
    )
    clock = SyncedClock(plan.pretrain_warmup)
    trainer = CrystalPretrainer(model, args, train_dataset=Dataset.from_list(rows), callbacks=[clock])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    output = trainer.train()
    seconds = clock.end - clock.start
    timed = plan.pretrain_steps - plan.pretrain_warmup
    result = {
        "crystals_per_s": round(timed * plan.pretrain_batch / seconds, 1),
        "timed_steps": timed,
        "seconds": round(seconds, 2),
        "seconds_before_timing": round(clock.compile_seconds, 1),
        "training_loss": output.training_loss,
        "device": str(trainer.args.device),
        "dataloader_pin_memory": trainer.args.dataloader_pin_memory,
        "train_sampling_strategy": args.train_sampling_strategy,
        "dropout": model.config.hidden_dropout,
        "ok": math.isfinite(output.training_loss),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del trainer, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def pretraining_section(plan: Plan, device, workdir: Path) -> dict:
    bench = bench_train()
    rows, data = real_rows(plan.pretrain_rows)
    result = {
        "model_size": plan.pretrain_size,
        "parameters": sum(p.numel() for p in bench.make_model(plan.pretrain_size).parameters()),
        "batch": plan.pretrain_batch,
        "data": data,
        "path": "CrystalPretrainer.train() with the project's default pretraining settings",
        "variants": {},
    }
    for name in plan.pretrain_precisions:
        result["variants"][name] = attempt(
            time_pretraining, bench, rows, device, plan, name == "bf16", workdir / f"pretrain_{name}"
        )
    result["ok"] = all(v["ok"] for v in result["variants"].values())
    return result


# -------------------------------------------------------------------------------------------------------- RL
def rl_model(size: str, workdir: Path) -> Path:
    """A freshly initialised policy saved as a model folder (``--model``), the same for every run."""
    folder = workdir / f"rl_model_{size}"
    if not (folder / "config.json").exists():
        import torch

        from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration
        from crystalformer_rl.trainers.utils import MODEL_SIZES

        torch.manual_seed(0)
        CrystalFormerForCrystalGeneration(CrystalFormerConfig(**MODEL_SIZES[size])).save_pretrained(folder)
    return folder


def rl_command(section: str, cpu: bool, model: Path, output_dir: Path, batch: int, resume: Path | None = None):
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        ACCELERATE_CONFIGS[section],
        "--num_processes",
        "1",
        "--main_process_port",
        str(free_port()),
    ]
    if cpu:
        launch.append("--cpu")
    rl = [
        "-m", "crystalformer_rl.cli", "rl",
        "--model", str(model),
        "--rewards", "device_check:mean_atomic_number",
        "--prompts", PROMPTS,
        "--output_dir", str(output_dir),
        "--max_steps", str(RL_STEPS),
        "--num_iterations", "3",
        "--save_strategy", "steps",
        "--save_steps", str(RL_KILL_AT),
        "--per_device_train_batch_size", str(batch),
        "--num_generations", "2",
        "--logging_steps", "1",
        "--seed", "0",
        "--report_to", "none",
        "--disable_tqdm", "true",
        "--log_crystal_metrics", "false",
    ]  # fmt: skip
    if cpu:
        rl += ["--use_cpu", "true"]
    if resume is not None:
        rl += ["--resume_from_checkpoint", str(resume)]
    return launch + rl


def wait_for_checkpoint_and_kill(run: Run, marker: Path, timeout: float) -> dict:
    """Kill the run (SIGKILL, the whole process tree) as soon as ``marker`` (the last file a checkpoint gets)
    exists. If the run got further first, the resume still starts from that checkpoint."""
    while True:
        returncode = run.proc.poll()
        if marker.exists():
            if returncode is None:
                kill_tree(run)
            run.log.close()
            return {"killed": returncode is None, "returncode_if_finished_first": returncode}
        if returncode is not None:
            run.log.close()
            raise RuntimeError(f"the run to kill exited ({returncode}) before {marker.parent.name}:\n{run.tail()}")
        if time.perf_counter() - run.started > timeout:
            kill_tree(run)
            run.log.close()
            raise TimeoutError(f"no {marker.parent.name} after {timeout:.0f} s:\n{run.tail()}")
        time.sleep(0.05)


def compare_models(a: Path, b: Path, initial: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    first, second, start_params = (load_file(str(p / "model.safetensors")) for p in (a, b, initial))
    different_keys = sorted(set(first) ^ set(second))
    common = [k for k in first if k in second and first[k].is_floating_point()]
    diff = max((first[k].double() - second[k].double()).abs().max().item() for k in common)
    close = all(torch.allclose(first[k].double(), second[k].double(), rtol=1e-5, atol=1e-6) for k in common)
    moved = max((first[k].double() - start_params[k].double()).abs().max().item() for k in common if k in start_params)
    return {
        "tensors_compared": len(common),
        "different_keys": different_keys[:10],
        "max_abs_param_diff": diff,
        "params_close": close and not different_keys,
        "max_param_change_from_init": moved,
    }


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def rl_section(section: str, plan: Plan, cpu: bool, workdir: Path) -> dict:
    from crystalformer_rl.trainers.crystal_rloo_trainer import EMA_STATE_NAME

    base = workdir / section
    model = rl_model(plan.rl_model_size, workdir)
    straight_dir, run_dir = base / "straight", base / "killed"
    env = child_env(single_thread=cpu)
    result = {
        "launcher": f"accelerate launch --config_file {ACCELERATE_CONFIGS[section]} --num_processes 1"
        + (" --cpu" if cpu else ""),
        "model_size": plan.rl_model_size,
        "per_device_batch": plan.rl_batch,
        "steps": RL_STEPS,
        "reward": "device_check:mean_atomic_number",
    }
    # The straight run and the run to kill, side by side.
    straight = start(rl_command(section, cpu, model, straight_dir, plan.rl_batch), base / "straight.log", env)
    killed = start(rl_command(section, cpu, model, run_dir, plan.rl_batch), base / "killed.log", env)
    try:
        marker = run_dir / f"checkpoint-{RL_KILL_AT}" / EMA_STATE_NAME
        result["kill"] = wait_for_checkpoint_and_kill(killed, marker, plan.run_timeout_s)
        result["kill"]["after_checkpoint"] = RL_KILL_AT
        returncode = finish(straight, plan.run_timeout_s)
        result["straight"] = {"returncode": returncode, "seconds": round(time.perf_counter() - straight.started, 1)}
        if returncode != 0:
            return {**result, "ok": False, "error": "the straight run failed", "log_tail": straight.tail()}
    finally:
        for run in (straight, killed):
            if run.proc.poll() is None:
                kill_tree(run)
            if not run.log.closed:
                run.log.close()

    # Keep only the checkpoint to resume from (a run that got further before the kill leaves more).
    for entry in run_dir.iterdir():
        if entry.name != f"checkpoint-{RL_KILL_AT}":
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    checkpoint = run_dir / f"checkpoint-{RL_KILL_AT}"
    resumed = start(rl_command(section, cpu, model, run_dir, plan.rl_batch, checkpoint), base / "resumed.log", env)
    returncode = finish(resumed, plan.run_timeout_s)
    result["resumed"] = {"returncode": returncode, "seconds": round(time.perf_counter() - resumed.started, 1)}
    if returncode != 0:
        return {**result, "ok": False, "error": "the resumed run failed", "log_tail": resumed.tail()}

    result.update(compare_models(straight_dir, run_dir, model))
    final = f"checkpoint-{RL_STEPS}"
    ema = [(_read_json(d / final / EMA_STATE_NAME) or {}).get("ema_baseline") for d in (straight_dir, run_dir)]
    result["ema_baseline"] = {"straight": ema[0], "resumed": ema[1]}
    ema_close = None not in ema and math.isclose(ema[0], ema[1], rel_tol=1e-6, abs_tol=1e-6)
    for name, folder in (("straight", straight_dir), ("resumed", run_dir)):
        history = _read_json(folder / "log_history.json") or []
        result[name]["rewards"] = [round(h["reward"], 6) for h in history if "reward" in h]
    result["ok"] = bool(result["params_close"] and ema_close and result["max_param_change_from_init"] > 1e-7)
    if not result["ok"]:
        result["error"] = (
            "the resumed run did not land on the straight run's parameters / EMA baseline"
            if result["max_param_change_from_init"] > 1e-7
            else "the parameters did not move"
        )
    return result


def deepspeed_skip_reason(cpu: bool) -> str | None:
    import importlib.util

    installed = importlib.util.find_spec("deepspeed") is not None
    if cpu:
        note = "" if installed else "; also not installed"
        return f"--cpu: DeepSpeed does not run on the CPU through accelerate{note}"
    if not installed:
        return "deepspeed not installed (pip install -e '.[deepspeed]')"
    return None


# ------------------------------------------------------------------------------------------------------ main
def default_output(device) -> Path:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"
    return REPO / "docs" / "benchmarks" / f"device_{slug}.json"


def summary(sections: dict) -> dict:
    out = {}
    sampling = sections.get("sampling", {})
    for name, variant in sampling.get("variants", {}).items():
        out[f"sampling_{name}_crystals_per_s"] = variant.get("crystals_per_s")
    if "cpu" in sampling:
        out["sampling_cpu_fp32_crystals_per_s"] = sampling["cpu"].get("crystals_per_s")
    for name, variant in sections.get("pretraining", {}).get("variants", {}).items():
        out[f"pretraining_{name}_crystals_per_s"] = variant.get("crystals_per_s")
    for name in ("rl_accelerate", "rl_deepspeed_zero2"):
        if name in sections:
            entry = sections[name]
            out[f"{name}_resume_exact"] = f"skipped: {entry['skipped']}" if entry.get("skipped") else entry["ok"]
    if "tests" in sections:
        out["tests"] = {k: sections["tests"].get(k) for k in ("passed", "failed", "errors", "skipped")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run everything on the CPU, shorter (CI)")
    parser.add_argument("--output", help="JSON file (default: docs/benchmarks/device_<gpu name or cpu>.json)")
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder, removed at the end)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--pytest-args", help=f"the tests to run (default GPU: {GPU_TESTS!r}; --cpu: {CPU_TESTS!r})")
    parser.add_argument("--budget", type=float, help="seconds after which no new section starts (recorded)")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")

    import torch

    from crystalformer_rl.devices import resolve_device
    from crystalformer_rl.utils import atomic_write_text

    if not args.cpu and not torch.cuda.is_available():
        print("device_check: no CUDA device visible; run with --cpu for the CPU check", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.cpu else resolve_device("auto")
    plan = CPU_PLAN if args.cpu else GPU_PLAN
    budget = args.budget if args.budget is not None else plan.budget_s
    output = Path(args.output) if args.output else default_output(device)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="device_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    pytest_args = shlex.split(args.pytest_args or (CPU_TESTS if args.cpu else GPU_TESTS))

    began = time.perf_counter()
    report = {
        "check": "scripts/device_check.py",
        "mode": "cpu" if args.cpu else "gpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False,
        "environment": attempt(environment, device),
        "plan": asdict(plan),
        "summary": {},
        "sections": {},
    }
    runners = {
        "tests": lambda: tests_section(pytest_args, plan.tests_timeout_s, workdir),
        "sampling": lambda: sampling_section(plan, device),
        "pretraining": lambda: pretraining_section(plan, device, workdir),
        "rl_accelerate": lambda: rl_section("rl_accelerate", plan, args.cpu, workdir),
        "rl_deepspeed_zero2": lambda: rl_section("rl_deepspeed_zero2", plan, args.cpu, workdir),
    }
    try:
        for name in SECTIONS:
            if name not in args.sections:
                continue
            elapsed = time.perf_counter() - began
            skip = deepspeed_skip_reason(args.cpu) if name == "rl_deepspeed_zero2" else None
            if skip:
                entry = {"ok": True, "skipped": skip}
            elif elapsed > budget:
                entry = {"ok": False, "error": f"not run: the {budget:.0f} s budget was spent ({elapsed:.0f} s)"}
            else:
                section_start = time.perf_counter()
                entry = attempt(runners[name])
                entry["section_seconds"] = round(time.perf_counter() - section_start, 1)
            report["sections"][name] = entry
            print(json.dumps({name: entry}, default=str), flush=True)
            report["summary"] = summary(report["sections"])
            atomic_write_text(json.dumps(report, indent=2, default=str) + "\n", output)  # partial results survive
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    report["complete"] = True
    report["seconds"] = round(time.perf_counter() - began, 1)
    report["ok"] = all(entry["ok"] for entry in report["sections"].values())
    report["skipped"] = [name for name, entry in report["sections"].items() if entry.get("skipped")]
    report["failed"] = [name for name, entry in report["sections"].items() if not entry["ok"]]
    report["summary"] = summary(report["sections"])
    text = json.dumps(report, indent=2, default=str)
    atomic_write_text(text + "\n", output)
    print(text)
    print(f"device_check: {'ok' if report['ok'] else 'FAILED: ' + ', '.join(report['failed'])} -> {output}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
