"""Issue 36's reliability sweep, small: bad files, bad options, bad model folders, bad YAML, malicious pickles,
interrupted runs and re-runs into used folders, each run as ``python -m crystalformer_rl.cli ...`` in a subprocess
with a timeout (one thread). Prints a JSON summary, one record per case: the exit code, how many stderr lines,
whether a traceback was printed, and (where it can be checked) whether data was lost or mixed. Exits 1 when any case
printed a traceback without --debug, or exited 0 having lost or mixed data.

    python scripts/reliability_sweep.py [--workdir DIR] [--keep]

About two to three minutes on one core (most of it is Python start-up: about 30 commands).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
PILOT = REPO.parent / "shared" / "data" / "mp20_pilot"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONPATH": str(REPO),
}
NACL = "225-a-Na-0-0-0-b-Cl-1/2-1/2-1/2-5.64-5.64-5.64-90-90-90"


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def digest(path: Path) -> str | None:
    """A hash of a file or of a folder's files (names and bytes); None if missing."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def cli(argv: list[str], timeout: float = 120, interrupt_after: float | None = None) -> dict:
    """Run one command; with ``interrupt_after`` a SIGINT (Ctrl-C) is sent that many seconds after it started."""
    command = [sys.executable, "-m", "crystalformer_rl.cli", *map(str, argv)]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if interrupt_after is not None:
            try:
                out, err = process.communicate(timeout=interrupt_after)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGINT)
                out, err = process.communicate(timeout=timeout)
        else:
            out, err = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        code = "timeout"
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    return {
        "exit": code,
        "stderr_lines": len(lines),
        "traceback": "Traceback" in err,
        "seconds": round(time.perf_counter() - start, 1),
        "stdout": out,
        "last_stderr": lines[-1][:200] if lines else "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where the cases write (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args()
    work = Path(options.workdir or tempfile.mkdtemp(prefix="reliability-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []

    def case(name: str, argv: list[str], lost=None, **kwargs) -> dict:
        """Run a case; ``lost`` (a function of the result) says whether data was lost or mixed."""
        result = cli(argv, **kwargs)
        record = {"case": name, **{k: result[k] for k in ("exit", "stderr_lines", "traceback", "seconds")}}
        record["data_lost"] = None if lost is None else bool(lost(result))
        record["last_stderr"] = result["last_stderr"]
        if name.startswith("malicious"):
            record["code_ran"] = "pwned" in result["stdout"]
        results.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
        return result

    # ------------------------------------------------------------------------------------------- inputs
    samples = work / "samples.csv"
    samples.write_text(f"tokens\n{NACL}\n{NACL}\n")
    empty = work / "empty.csv"
    empty.write_text("cif\n")
    corrupt = work / "corrupt.parquet"
    corrupt.write_text("{not parquet")
    a_file = work / "a_file"
    a_file.write_text("not a folder")
    secret = work / "secret.cif"
    secret.write_text("data_x\n_cell_length_a 4\n")
    path_cell = work / "path_cell.csv"
    path_cell.write_text(f"cif\n{secret}\n")
    (work / "bad.yaml").write_text("space_group: [225\n")
    (work / "zero.yaml").write_text("space_group: 0\n")
    evil = work / "evil.pkl"
    evil.write_bytes(pickle.dumps({"params": Evil()}))
    random_pkl = work / "random.pkl"
    random_pkl.write_bytes(bytes(range(256)) * 4)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tests.helpers.rl_toy import tiny_model; tiny_model().save_pretrained(sys.argv[1])",
            str(work / "tiny"),
        ],
        env=ENV,
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    no_weights = work / "no_weights"
    no_weights.mkdir(exist_ok=True)
    shutil.copy(work / "tiny" / "config.json", no_weights)
    malformed = work / "malformed"
    shutil.copytree(work / "tiny", malformed, dirs_exist_ok=True)
    (malformed / "config.json").write_text("{not json")
    tiny = ["--model", work / "tiny"]
    quiet = ["--no_progress", "--no_stability", "--no_novelty"]

    # --------------------------------------------------------------------------------------- bad files
    case("evaluate empty csv", ["evaluate", empty, "-o", work / "e1", *quiet])
    case("evaluate corrupt parquet", ["evaluate", corrupt, "-o", work / "e2", *quiet])
    case(
        "evaluate cif cell holding a path",
        ["evaluate", path_cell, "-o", work / "e3", *quiet],
        lost=lambda r: (
            "_cell_length_a 4" in (work / "e3" / "structures.csv").read_text()
            if (work / "e3" / "structures.csv").exists()
            else False
        ),
    )
    case("prepare-data empty csv", ["prepare-data", empty, work / "p1", "--num_proc", "1"])
    # ------------------------------------------------------------------------------------- bad options
    case("sample -n 0", ["sample", "-n", "0", "-o", work / "s0"])
    case("evaluate --symprec -1", ["evaluate", samples, "--symprec", "-1", "-o", work / "e4"])
    case("sample -g 225 -w z", ["sample", "-g", "225", "-w", "z", "-o", work / "s1"])
    case("sample -w a b without -g", ["sample", "-w", "a", "b", "-o", work / "s2"])
    case("sample batch too big for memory", ["sample", "-n", "200000", "--batch_size", "200000", "-o", work / "s3"])
    case("sample -o a file", ["sample", "-n", "2", "-o", a_file])
    case("evaluate -o below a file", ["evaluate", samples, "-o", a_file / "x", *quiet])
    case("rl --output_dir unwritable", ["rl", "--output_dir", "/proc/no-such/run", "--use_cpu", "true"])
    case("rl --rewards ehul", ["rl", *tiny, "--rewards", "ehul", "--output_dir", work / "r0", "--use_cpu", "true"])
    # -------------------------------------------------------------------------------- bad model folders
    case("sample model without weights", ["sample", "--model", no_weights, "-n", "2", "-o", work / "s4"])
    case("sample malformed config.json", ["sample", "--model", malformed, "-n", "2", "-o", work / "s5"])
    case("sample random .pkl", ["sample", "--model", random_pkl, "-n", "2", "-o", work / "s6"])
    # ------------------------------------------------------------------------------------------ bad YAML
    case("sample YAML syntax error", ["sample", "--config", work / "bad.yaml"])
    case("sample YAML space_group: 0", ["sample", "--config", work / "zero.yaml"])
    # ------------------------------------------------------------------------------------ malicious pickles
    case("malicious pickle convert", ["convert", evil, work / "c1"])
    case("malicious pickle as --model", ["sample", "--model", evil, "-n", "2", "-o", work / "s7"])

    # ---------------------------------------------------------------------------- re-runs into used folders
    h = work / "h"
    case("sample -n 20 -o h", ["sample", *tiny, "-g", "225", "-n", "20", "-o", h])
    before = digest(h)
    case(
        "sample -n 5 -o h --seed 2 (used)",
        ["sample", *tiny, "-n", "5", "-o", h, "--seed", "2"],
        lost=lambda r: digest(h) != before,
    )

    def mixed(result) -> bool:
        import pandas as pd

        table = pd.read_csv(h / "samples.csv")
        cifs = sorted(p.stem for p in (h / "cifs").glob("*.cif"))
        return len(table) != 5 or cifs != sorted(table[table.valid_tokens].id)

    case(
        "sample -n 5 -o h --seed 2 --overwrite",
        ["sample", *tiny, "-n", "5", "-o", h, "--seed", "2", "--overwrite"],
        lost=mixed,
    )
    ev = work / "ev"
    case("evaluate -o ev", ["evaluate", samples, "-o", ev, *quiet])
    before = digest(ev)
    case(
        "evaluate -o ev again (used)",
        ["evaluate", samples, "-o", ev, *quiet, "--no_plots"],
        lost=lambda r: digest(ev) != before,
    )
    case(
        "evaluate -o ev --overwrite --format csv --no_plots",
        ["evaluate", samples, "-o", ev, *quiet, "--overwrite", "--format", "csv", "--no_plots"],
        lost=lambda r: (
            r["exit"] == 0
            and sorted(p.name for p in ev.iterdir()) != ["space_groups.csv", "structures.csv", "summary.json"]
        ),
    )
    source = work / "pilot30.csv"
    import pandas as pd

    pd.read_csv(PILOT / "val.csv.gz").iloc[:30][["material_id", "cif"]].to_csv(source, index=False)
    prepared = work / "prepared"
    prep = ["prepare-data", source, prepared, "--num_proc", "1", "--shard_size", "10"]
    case("prepare-data --limit 10", [*prep, "--limit", "10"])

    def incomplete(result) -> bool:
        summary = json.loads((prepared / "summary.json").read_text())
        return result["exit"] == 0 and summary["encoded"] + summary["failed"] != 30

    case("prepare-data no limit --resume (other args)", [*prep, "--resume"], lost=incomplete)
    case("prepare-data no limit --overwrite", [*prep, "--overwrite"], lost=incomplete)
    run = work / "rl"
    rl = [
        "rl", *tiny, "--rewards", "tests.helpers.rl_toy:anion_fraction", "--output_dir", run,
        "--per_device_train_batch_size", "8", "--num_generations", "2", "--max_steps", "3", "--save_steps", "3",
        "--use_cpu", "true", "--disable_tqdm", "true", "--report_to", "none",
    ]  # fmt: skip
    case("rl tiny run", rl, timeout=300)
    model = digest(run / "model.safetensors")
    case("rl rerun into the used folder", rl, lost=lambda r: digest(run / "model.safetensors") != model, timeout=300)
    case(
        "rl resume a finished run",
        [*rl, "--resume_from_checkpoint", "last"],
        lost=lambda r: digest(run / "model.safetensors") != model or (run / "checkpoint-4").exists(),
        timeout=300,
    )

    # ----------------------------------------------------------------------------------- interrupted runs
    big = work / "big"

    def kept(result) -> bool:  # every row of the table has its CIF, and the metadata counts them
        table = pd.read_csv(big / "samples.csv")
        meta = json.loads((big / "sampling.json").read_text())
        cifs = {p.stem for p in (big / "cifs").glob("*.cif")}
        return meta["num_samples"] != len(table) or not set(table[table.valid_tokens].id) <= cifs

    case("sample Ctrl-C", ["sample", "-n", "20000", "--batch_size", "100", "-o", big], lost=kept, interrupt_after=12)
    full = work / "pilot_train.csv"
    pd.read_csv(PILOT / "train.csv.gz")[["material_id", "cif"]].to_csv(full, index=False)
    case(
        "prepare-data Ctrl-C (2 workers)",
        ["prepare-data", full, work / "p2", "--num_proc", "2", "--shard_size", "100"],
        interrupt_after=12,
        timeout=30,
    )

    bad = [r for r in results if r["traceback"] or (r["exit"] == 0 and r["data_lost"]) or r.get("code_ran")]
    summary = {
        "cases": len(results),
        "tracebacks": sum(r["traceback"] for r in results),
        "exit_0_with_data_lost": sum(bool(r["exit"] == 0 and r["data_lost"]) for r in results),
        "exit_codes": {
            str(k): sum(r["exit"] == k for r in results) for k in sorted({str(r["exit"]) for r in results})
        },
        "results": results,
        "ok": not bad,
    }
    summary["exit_codes"] = {k: sum(str(r["exit"]) == k for r in results) for k in summary["exit_codes"]}
    print(json.dumps(summary, indent=1))
    if not options.keep and not options.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
