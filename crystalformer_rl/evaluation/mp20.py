"""The MP-20 generation benchmark: CDVAE's metrics, as every MP-20 table reports them.

For generated crystals against the 9,046 crystals of MP-20's test split (Xie et al., ICLR 2022, ``compute_metrics``):

* **validity** over *all* samples: structural (every interatomic distance ≥ 0.5 Å, volume ≥ 0.1 Å^3) and
  compositional (SMACT charge neutrality + Pauling test); a crystal that fails to build is invalid on both;
* **coverage**: each crystal is described by the mean CrystalNN "ops" site fingerprint of its sites (61 numbers)
  and matminer's magpie ``ElementProperty`` features of its composition (132 numbers, scaled by CDVAE's fixed means
  and standard deviations, NaN → 0). COV-R is the share of test crystals with a generated crystal within 0.4
  (structure) and, separately, within 10 (composition); COV-P the share of generated crystals within the same
  cutoffs of a test crystal, divided by the number of generated crystals (those whose fingerprint fails count in
  the denominator only);
* **Wasserstein distances** of the density and of the number of elements between 1,000 valid samples (drawn with
  a seed) and the whole test split.

w(E) (formation energy by CDVAE's own property model) is left out: that model is a CDVAE checkpoint this package
cannot load, and no other formation-energy model reproduces its numbers.

One deliberate difference: a crystal whose CrystalNN fingerprint takes longer than ``FINGERPRINT_TIME_LIMIT``
seconds (a generated cell can keep pymatgen's compiled neighbour search busy for hours) is given no fingerprint, as
CDVAE treats a fingerprint that raises; the benchmark reports how many (``fingerprint_timeouts``; a crystal whose worker died, e.g. out of memory, is
counted there too). Fingerprints are
computed in worker processes, and the worker of a crystal past the limit is killed and replaced (a signal would wait
for the compiled call to return). ``time_limit=0`` waits as CDVAE would.

The test split's features are computed once (``scripts/build_mp20_benchmark.py``) and shipped in
``crystalformer_rl/data/benchmarks`` with attribution; generated crystals are featurized on every core, in
chunks written as they finish, so a stopped run resumes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import time
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pymatgen.core import Composition, Structure
from tqdm.auto import tqdm

from ..materials.validity import composition_validity, structure_validity
from ..utils import atomic_write_text, atomic_write_with, ignore_sigint
from .relaxed_chunks import crystals_fingerprint


BENCHMARK_DIR = Path(__file__).resolve().parents[1] / "data" / "benchmarks"
MP20_TEST_FEATURES = BENCHMARK_DIR / "mp20_test_features.npz"
COMPOSITION_SCALER = BENCHMARK_DIR / "cdvae_composition_scaler.json"

#: SMACT 2.2.1's element data, as CDVAE pinned (SMACT 4's 2014 lists differ for a few elements)
OXIDATION_STATES = "cdvae"
#: CDVAE's coverage cutoffs for MP-20 (``COV_Cutoffs["mp20"]``)
STRUCTURE_CUTOFF = 0.4
COMPOSITION_CUTOFF = 10.0
STRUCTURE_FP_SIZE, COMPOSITION_FP_SIZE = 61, 132
#: seconds one crystal's fingerprint may take (typical: under a second); past it, the crystal has no fingerprint
FINGERPRINT_TIME_LIMIT = 120.0


@dataclass
class CrystalFeatures:
    """What the benchmark needs of a set of crystals, one row per crystal (NaN rows where a fingerprint failed)."""

    struct_valid: np.ndarray  # bool (n,)
    comp_valid: np.ndarray  # bool (n,)
    structure_fp: np.ndarray  # float (n, 61); NaN rows: no fingerprint
    composition_fp: np.ndarray  # float (n, 132), unscaled magpie features; NaN rows: no fingerprint
    density: np.ndarray  # float (n,); NaN: no structure
    n_elements: np.ndarray  # int (n,); 0: no structure
    timed_out: np.ndarray = field(default=None)  # bool (n,): fingerprint stopped at the time limit

    def __post_init__(self):
        if self.timed_out is None:  # features saved before the time limit existed
            self.timed_out = np.zeros(len(self.struct_valid), dtype=bool)

    def __len__(self) -> int:
        return len(self.struct_valid)

    @property
    def valid(self) -> np.ndarray:
        """CDVAE's ``valid``: both validities and a fingerprint."""
        return self.struct_valid & self.comp_valid & self.has_fingerprint

    @property
    def has_fingerprint(self) -> np.ndarray:
        return ~np.isnan(self.structure_fp).any(axis=1)

    @classmethod
    def concatenate(cls, parts: Sequence[CrystalFeatures]) -> CrystalFeatures:
        return cls(**{k: np.concatenate([asdict(p)[k] for p in parts]) for k in asdict(parts[0])})

    def save(self, path: str | os.PathLike, **extra) -> Path:
        return atomic_write_with(lambda tmp: _savez(tmp, **asdict(self), **extra), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CrystalFeatures:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _savez(path: Path, **arrays) -> None:
    with open(path, "wb") as handle:  # a file object: np.savez would append ".npz" to the temporary name
        np.savez_compressed(handle, **arrays)


# ----------------------------------------------------------------------------------------------- featurizing
_FEATURIZERS = None


def _featurizers():
    global _FEATURIZERS
    if _FEATURIZERS is None:
        from matminer.featurizers.composition.composite import ElementProperty
        from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

        # impute_nan=False: the features of the matminer CDVAE used (NaN, replaced by 0 after scaling)
        _FEATURIZERS = (
            CrystalNNFingerprint.from_preset("ops"),
            ElementProperty.from_preset("magpie", impute_nan=False),
        )
    return _FEATURIZERS


def crystal_features(structure: Structure | None, fingerprints: bool = True) -> dict:
    """One crystal's validity and fingerprints, as CDVAE's ``Crystal`` computes them (without ``fingerprints``: the
    rest, as for a crystal whose fingerprint ran out of time)."""
    nan_row = {
        "struct_valid": False,
        "comp_valid": False,
        "structure_fp": np.full(STRUCTURE_FP_SIZE, np.nan),
        "composition_fp": np.full(COMPOSITION_FP_SIZE, np.nan),
        "density": np.nan,
        "n_elements": 0,
        "timed_out": False,
    }
    if structure is None:
        return nan_row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            composition = Composition(structure.composition.element_composition)
            row = {
                "struct_valid": structure_validity(structure),
                "comp_valid": composition_validity(composition, oxidation_states=OXIDATION_STATES),
                "structure_fp": nan_row["structure_fp"],
                "composition_fp": nan_row["composition_fp"],
                "density": float(structure.density),
                "n_elements": len(composition.elements),
                "timed_out": False,
            }
        except Exception:  # no usable composition or cell: counts as an invalid crystal
            return nan_row
        if not fingerprints:
            return row
        site_fp, composition_fp = _featurizers()
        try:
            row["structure_fp"] = np.mean([site_fp.featurize(structure, i) for i in range(len(structure))], axis=0)
            row["composition_fp"] = np.asarray(composition_fp.featurize(composition), dtype=float)
        except Exception:  # CDVAE: no fingerprints, so not `valid`; its struct / comp validity stay as computed
            row["structure_fp"], row["composition_fp"] = nan_row["structure_fp"], nan_row["composition_fp"]
    return row


def _features_of(rows: list[dict]) -> CrystalFeatures:
    return CrystalFeatures(
        struct_valid=np.array([r["struct_valid"] for r in rows], dtype=bool),
        comp_valid=np.array([r["comp_valid"] for r in rows], dtype=bool),
        structure_fp=np.array([r["structure_fp"] for r in rows], dtype=float).reshape(-1, STRUCTURE_FP_SIZE),
        composition_fp=np.array([r["composition_fp"] for r in rows], dtype=float).reshape(-1, COMPOSITION_FP_SIZE),
        density=np.array([r["density"] for r in rows], dtype=float),
        n_elements=np.array([r["n_elements"] for r in rows], dtype=int),
        timed_out=np.array([r["timed_out"] for r in rows], dtype=bool),
    )


def _features_of_crystal(crystal: Structure | str | None, fingerprints: bool = True) -> dict:
    if crystal is None or isinstance(crystal, Structure):
        return crystal_features(crystal, fingerprints)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(crystal, fmt="cif")
    except Exception:
        structure = None
    return crystal_features(structure, fingerprints)


#: the crystals of the chunk being featurized: forked workers inherit them and receive indices only
_CHUNK: Sequence = ()


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent dies, even by SIGKILL, so a crystal stuck in compiled
    code cannot keep a core busy for hours after the benchmark is gone. Elsewhere: nothing."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker(connection) -> None:
    ignore_sigint()
    _die_with_parent()
    while (index := connection.recv()) is not None:
        connection.send((index, _features_of_crystal(_CHUNK[index])))


def _featurize_in_workers(chunk: Sequence, num_proc: int, time_limit: float | None) -> list[dict]:
    """Every crystal's features on ``num_proc`` worker processes; a worker still on one crystal after
    ``time_limit`` seconds (or one that died) is killed and replaced, and that crystal gets no fingerprint."""
    global _CHUNK
    _featurizers()  # built once here, inherited by every worker
    _CHUNK, context = chunk, mp.get_context("fork")
    rows: list[dict | None] = [None] * len(chunk)
    todo = deque(range(len(chunk)))
    workers: dict = {}  # connection -> [process, index of its crystal, when it started it]

    def spawn_and_feed() -> None:
        ours, theirs = context.Pipe()
        process = context.Process(target=_worker, args=(theirs,), daemon=True)
        process.start()
        theirs.close()
        workers[ours] = [process, None, 0.0]
        feed(ours)

    def retire(connection) -> None:
        process = workers.pop(connection)[0]
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()

    def feed(connection) -> None:
        if not todo:
            try:
                connection.send(None)
            except OSError:  # already gone
                pass
            retire(connection)
            return
        index = todo.popleft()
        try:
            connection.send(index)
        except OSError:  # the worker died between two crystals: the crystal goes back, a new worker takes it
            todo.appendleft(index)
            workers[connection][0].kill()
            retire(connection)
            spawn_and_feed()
            return
        workers[connection][1:] = [index, time.monotonic()]

    def give_up(connection) -> None:
        process, index, _ = workers.pop(connection)
        process.kill()
        process.join()
        rows[index] = {**_features_of_crystal(chunk[index], fingerprints=False), "timed_out": True}
        if todo:
            spawn_and_feed()

    try:
        for _ in range(min(num_proc, len(chunk))):
            spawn_and_feed()
        while workers:
            deadlines = [started + time_limit for _, _, started in workers.values()] if time_limit else []
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for connection in mp_connection.wait(list(workers), timeout=timeout):
                try:
                    index, row = connection.recv()
                except (EOFError, OSError):  # the worker died (out of memory, a crash in compiled code)
                    give_up(connection)
                    continue
                rows[index] = row
                feed(connection)
            now = time.monotonic()
            for connection, (_, _, started) in list(workers.items()):
                if time_limit and now - started > time_limit:
                    give_up(connection)
    finally:
        for process, _, _ in workers.values():
            process.kill()
            process.join()
        _CHUNK = ()
    return rows


def featurize(
    crystals: Sequence[Structure | str | None],
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 500,
    progress: bool = True,
    time_limit: float | None = FINGERPRINT_TIME_LIMIT,
) -> CrystalFeatures:
    """Features of many crystals (Structures, CIF texts, or None for one that did not build), on ``num_proc``
    processes (default: every core), each crystal's fingerprints within ``time_limit`` seconds (0 / None: no limit).
    With ``cache_dir``, each finished chunk is written there and a rerun over the same crystals keeps it."""
    num_proc = num_proc or os.cpu_count() or 1
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        _check_cache(cache, _digest(crystals), chunk_size, time_limit)
    parts = []
    bar = tqdm(total=len(crystals), desc="MP-20 fingerprints", unit="crystal", disable=not progress)
    in_workers = num_proc > 1 or bool(time_limit)
    try:
        for start in range(0, len(crystals), chunk_size):
            chunk = crystals[start : start + chunk_size]
            file = cache / f"chunk-{start // chunk_size:05d}.npz" if cache else None
            if file is not None and file.exists():
                parts.append(CrystalFeatures.load(file))
            else:
                rows = (
                    _featurize_in_workers(chunk, num_proc, time_limit)
                    if in_workers
                    else [_features_of_crystal(crystal) for crystal in chunk]
                )
                parts.append(_features_of(rows))
                if file is not None:
                    parts[-1].save(file)
            bar.update(len(chunk))
    finally:
        bar.close()
    return CrystalFeatures.concatenate(parts) if parts else _features_of([])


def validity(crystals: Sequence[Structure | None]) -> tuple[np.ndarray, np.ndarray]:
    """Structural and compositional validity of each crystal (a crystal that did not build: neither), as
    :func:`crystal_features` computes them; cheap, so a benchmark recomputes them rather than trusting a cache."""
    struct, comp = [], []
    for crystal in crystals:
        if crystal is None:
            struct.append(False)
            comp.append(False)
            continue
        try:
            composition = Composition(crystal.composition.element_composition)
            struct.append(structure_validity(crystal))
            comp.append(composition_validity(composition, oxidation_states=OXIDATION_STATES))
        except Exception:
            struct.append(False)
            comp.append(False)
    return np.array(struct, dtype=bool), np.array(comp, dtype=bool)


def _digest(crystals: Sequence[Structure | str | None]) -> str:
    """What the cached fingerprints are of: CIF texts as they are, structures by species, cell and coordinates."""
    digest = hashlib.sha256()
    for i, crystal in enumerate(crystals):
        record = crystal if isinstance(crystal, str) else crystals_fingerprint([crystal], [str(i)])
        digest.update(record.encode() + b"\n")
    return digest.hexdigest()


def _check_cache(cache: Path, digest: str, chunk_size: int, time_limit: float | None) -> None:
    settings = {"crystals_sha256": digest, "chunk_size": chunk_size, "time_limit": float(time_limit or 0)}
    file = cache / "settings.json"
    earlier = json.loads(file.read_text()) if file.exists() else None
    if earlier is not None and "time_limit" not in earlier:  # written before the limit was recorded: its default
        earlier["time_limit"] = FINGERPRINT_TIME_LIMIT
    if earlier is not None and earlier != settings:
        what = "other crystals" if earlier.get("crystals_sha256") != digest else f"other settings ({earlier})"
        raise ValueError(f"{cache} holds fingerprints of {what} ({file}); pass --overwrite or choose another folder")
    atomic_write_text(json.dumps(settings), file)


# ----------------------------------------------------------------------------------------------- metrics
def scale_composition(composition_fp: np.ndarray) -> np.ndarray:
    """CDVAE's ``CompScaler``: fixed means and standard deviations, NaN → 0 after scaling."""
    scaler = json.loads(COMPOSITION_SCALER.read_text())
    scaled = (composition_fp - np.asarray(scaler["means"])) / np.asarray(scaler["stds"])
    return np.where(np.isnan(scaled), 0.0, scaled)


def coverage(
    generated: CrystalFeatures,
    reference: CrystalFeatures,
    structure_cutoff: float = STRUCTURE_CUTOFF,
    composition_cutoff: float = COMPOSITION_CUTOFF,
    block: int = 2048,
) -> dict[str, float]:
    """COV-R and COV-P in CDVAE's sense (``compute_cov``), in blocks so 10,000 × 9,046 distances fit in memory."""
    from scipy.spatial.distance import cdist

    gen_ok, ref_ok = generated.has_fingerprint, reference.has_fingerprint
    gen_s, gen_c = generated.structure_fp[gen_ok], scale_composition(generated.composition_fp[gen_ok])
    ref_s, ref_c = reference.structure_fp[ref_ok], scale_composition(reference.composition_fp[ref_ok])
    recall_s = np.full(len(ref_s), np.inf)
    recall_c = np.full(len(ref_s), np.inf)
    precise = 0
    for start in range(0, len(gen_s), block):
        ds = cdist(gen_s[start : start + block], ref_s)
        dc = cdist(gen_c[start : start + block], ref_c)
        recall_s = np.minimum(recall_s, ds.min(axis=0, initial=np.inf))
        recall_c = np.minimum(recall_c, dc.min(axis=0, initial=np.inf))
        precise += int(((ds.min(axis=1) <= structure_cutoff) & (dc.min(axis=1) <= composition_cutoff)).sum())
    recall = (recall_s <= structure_cutoff) & (recall_c <= composition_cutoff)
    return {
        "cov_recall": float(recall.mean()) if len(recall) else float("nan"),
        "cov_precision": precise / len(generated) if len(generated) else float("nan"),
    }


def wasserstein_distances(
    generated: CrystalFeatures, reference: CrystalFeatures, n_samples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """w(ρ) and w(#elem) between ``n_samples`` valid generated crystals (a seeded draw) and every reference
    crystal, as CDVAE's ``GenEval``. Fewer valid crystals than ``n_samples`` is an error, as there."""
    from scipy.stats import wasserstein_distance

    valid = np.flatnonzero(generated.valid)
    if len(valid) < n_samples:
        raise ValueError(f"only {len(valid)} valid crystals; the Wasserstein distances need {n_samples}")
    pick = np.random.default_rng(seed).choice(valid, n_samples, replace=False)
    built = ~np.isnan(reference.density)
    return {
        "wdist_density": float(wasserstein_distance(generated.density[pick], reference.density[built])),
        "wdist_num_elems": float(wasserstein_distance(generated.n_elements[pick], reference.n_elements[built])),
    }


def benchmark_metrics(
    generated: CrystalFeatures,
    reference: CrystalFeatures | None = None,
    n_wasserstein: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """The MP-20 table's columns (as percentages where the table prints them) for ``generated``."""
    reference = reference if reference is not None else load_mp20_test_features()
    metrics = {
        "samples": len(generated),
        "reference_crystals": len(reference),
        "struct_valid": 100 * float(generated.struct_valid.mean()),
        "comp_valid": 100 * float(generated.comp_valid.mean()),
        "valid": 100 * float(generated.valid.mean()),
        "fingerprint_timeouts": int(generated.timed_out.sum()),
    }
    metrics.update({k: 100 * v for k, v in coverage(generated, reference).items()})
    if generated.valid.sum() >= n_wasserstein:
        metrics.update(wasserstein_distances(generated, reference, n_wasserstein, seed))
    else:
        metrics.update({"wdist_density": None, "wdist_num_elems": None})
    metrics["wasserstein_samples"] = n_wasserstein
    return metrics


def load_mp20_test_features(path: str | os.PathLike = MP20_TEST_FEATURES) -> CrystalFeatures:
    """The shipped features of MP-20's test split (``scripts/build_mp20_benchmark.py``)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: the MP-20 test features are missing; run scripts/build_mp20_benchmark.py")
    return CrystalFeatures.load(path)


#: The MP-20 table's published rows: CDVAE's metrics recomputed on each model's own samples by the WyFormer
#: authors' evaluation notebooks (as quoted in this project's issue 34), for comparison in reports.
ANCHORS = {
    "CrystalFormer (paper, MP-20; 999 samples)": (93.4, 85.0, 94.6, 99.6, 0.193, 0.128),
    "DiffCSP": (100.0, 83.2, 99.5, 99.8, 0.351, 0.347),
    "FlowMM": (96.9, 83.1, 99.4, 99.7, 0.115, 0.094),
    "MatterGen (MP-20 model)": (99.99, 83.3, 96.0, 99.7, 0.14, 0.204),
    "MP-20 train vs test (the data itself)": (100.0, 90.4, 99.9, 99.8, 0.085, 0.023),
}
TABLE_COLUMNS = ("struct_valid", "comp_valid", "cov_recall", "cov_precision", "wdist_density", "wdist_num_elems")
TABLE_HEADER = ("struct. valid", "comp. valid", "COV-R", "COV-P", "w(ρ)", "w(#elem)")


def format_table(rows: dict[str, dict], anchors: bool = True) -> str:
    """A markdown table of benchmark results (``benchmark_metrics`` dicts), the published rows below them."""

    def cell(value) -> str:
        if value is None:
            return "–"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"

    lines = ["| model | " + " | ".join(TABLE_HEADER) + " |", "|---|" + "---:|" * len(TABLE_HEADER)]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(metrics.get(k)) for k in TABLE_COLUMNS) + " |")
    if anchors:
        for name, values in ANCHORS.items():
            lines.append(f"| {name} | " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines)
