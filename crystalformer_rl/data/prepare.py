"""Tokenize a CIF dataset (Hub id or local CSV / parquet / JSON) into CrystalFormer tokens.

The output folder is a parquet dataset that ``datasets.load_dataset("parquet", ...)`` (or
:func:`load_prepared`) reads back, streaming or not::

    out/
      shards/shard-00000.parquet ...   tokens of the rows that encoded (plus the id and the structure)
      failures.csv                      every row that did not, with the error type and the reason
      summary.json                      counts, rejection reasons, settings
      tokenizer_config.json             the tokenizer that made it

Work is written shard by shard with atomic renames, so an interrupted run resumes where it stopped and
never loses finished shards. Rows are encoded in parallel (``num_proc`` worker processes).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..errors import UsageError
from ..tokenization import CrystalTokenizationError, CrystalTokenizer, to_structure
from ..utils import atomic_write_table, atomic_write_text, content_sha256, ignore_sigint


STRUCTURE_COLUMNS = ("cif", "structure")
ID_COLUMNS = ("material_id", "id", "mat_id", "name")
_LOCAL_BUILDERS = {".csv": "csv", ".parquet": "parquet", ".json": "json", ".jsonl": "json"}


def _builder_for(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
    builder = _LOCAL_BUILDERS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise ValueError(f"{path}: unsupported file type; use CSV, parquet or JSON (optionally compressed)")
    return builder


def load_crystal_dataset(source: str | os.PathLike, split: str = "train", streaming: bool = False, **kwargs):
    """A ``datasets`` dataset of crystals from a Hub id (e.g. ``zdcao/alex-20``), a local file, or a folder.

    Local files are CSV, parquet or JSON(L), optionally gzipped, with a ``cif`` column or a ``structure``
    column (pymatgen ``Structure.as_dict()`` or its JSON text).
    """
    from datasets import load_dataset

    path = Path(source)
    if path.is_file():
        return load_dataset(_builder_for(path), data_files=str(path), split="train", streaming=streaming, **kwargs)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _maybe_builder(p))
        if not files:
            raise FileNotFoundError(f"{path}: no CSV, parquet or JSON files")
        builders = {_builder_for(p) for p in files}
        if len(builders) > 1:
            raise ValueError(f"{path}: mixed file types {sorted(builders)}; keep one type per folder")
        return load_dataset(
            builders.pop(), data_files=[str(p) for p in files], split="train", streaming=streaming, **kwargs
        )
    return load_dataset(str(source), split=split, streaming=streaming, **kwargs)


def _maybe_builder(path: Path) -> str | None:
    try:
        return _builder_for(path)
    except ValueError:
        return None


def structure_column(column_names: Iterable[str]) -> str:
    names = list(column_names)
    for column in STRUCTURE_COLUMNS:
        if column in names:
            return column
    raise ValueError(f"no structure column: expected one of {STRUCTURE_COLUMNS}, found {names}")


def id_column(column_names: Iterable[str]) -> str | None:
    names = list(column_names)
    return next((c for c in ID_COLUMNS if c in names), None)


# ----------------------------------------------------------------------------------------------- workers
_TOKENIZER: CrystalTokenizer | None = None


_CHECK: Callable[[Any], str | None] | None = None


def _init_worker(
    tokenizer_config: dict[str, Any], check: Callable[[Any], str | None] | None = None, in_pool: bool = False
) -> None:
    global _TOKENIZER, _CHECK
    if in_pool:
        ignore_sigint()
    warnings.simplefilter("ignore")
    _CHECK = check
    config = dict(tokenizer_config)
    config.pop("tokenizer_class", None)
    _TOKENIZER = CrystalTokenizer(**config)


def _encode(job: tuple[str, Any]) -> dict[str, Any]:
    name, crystal = job
    try:
        # a cell is the crystal itself (CIF text, a structure dict or its JSON), never a path to a file to open
        structure = to_structure(crystal, name, files=False)
        reason = _CHECK(structure) if _CHECK is not None else None
        if reason is not None:
            return {"id": name, "error_type": "InvalidCrystal", "error": f"{name}: {reason}"}
        tokens = _TOKENIZER.encode(structure, name=name)
    except CrystalTokenizationError as exc:
        return {"id": name, "error_type": type(exc).__name__, "error": str(exc)}
    except Exception as exc:  # a bug or a library failure on one row must not end the batch job
        return {"id": name, "error_type": type(exc).__name__, "error": f"{name}: unexpected error: {exc}"}
    return {"id": name, **tokens.as_dict(), "num_sites": tokens.num_sites, "num_atoms": tokens.num_atoms}


def _chunks(iterator: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


_OPTIONS = {
    "source": "source",
    "source_sha256": "source's content (sha256)",
    "keep_structure": "--structure",
    "tokenizer": "--n_max (the tokenizer)",
}


def prepare_data(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    split: str = "train",
    streaming: bool = False,
    tokenizer: CrystalTokenizer | None = None,
    num_proc: int = 1,
    shard_size: int = 2000,
    limit: int | None = None,
    keep_structure: bool = True,
    dataset=None,
    progress: bool = True,
    check: Callable[[Any], str | None] | None = None,
) -> dict[str, Any]:
    """Tokenize ``source`` into ``output_dir`` (see the module docstring); returns the summary.

    Bad rows are skipped and reported in ``failures.csv``; the job itself never stops on one. ``check`` (a
    picklable function of a pymatgen ``Structure``, e.g. ``materials.structures.check_structure``) returns why a
    crystal must stay out of the shards, or ``None``; its reason goes to ``failures.csv``. Re-running with the same
    arguments resumes: finished shards are kept and only missing ones are computed; the manifest records every
    argument that decides the content (source, split, shard size, limit, tokenizer, structure column, check), and a
    resume with other ones is refused. A call that fails before its first shard leaves no folder behind.
    """
    tokenizer = tokenizer or CrystalTokenizer()
    out = Path(output_dir)
    settings = {
        "source": str(source),
        "source_sha256": content_sha256(source),
        "split": split,
        "shard_size": shard_size,
        "limit": limit,
        "keep_structure": keep_structure,
        "check": None if check is None else f"{check.__module__}.{check.__qualname__}",
        "tokenizer": tokenizer.to_dict(),
    }
    manifest = out / "manifest.json"
    if manifest.exists():
        earlier = json.loads(manifest.read_text())
        earlier.setdefault("source_sha256", settings["source_sha256"])  # a manifest from before it was recorded
        changed = [k for k in sorted(set(settings) | set(earlier)) if settings.get(k) != earlier.get(k)]
        if changed:
            what = ", ".join(
                f"{_OPTIONS.get(k, '--' + k)} {earlier.get(k)!r} then, {settings.get(k)!r} now" for k in changed
            )
            raise UsageError(
                f"{out} holds a run with other arguments ({what}); use the same ones to resume, or another folder"
            )
    created = not out.exists()
    try:
        ds = dataset if dataset is not None else load_crystal_dataset(source, split=split, streaming=streaming)
        columns = ds.column_names or list(next(iter(ds)).keys())
        column, ids = structure_column(columns), id_column(columns)
    except BaseException:
        if created and out.exists():  # nothing of this call is worth keeping; the corrected command starts clean
            shutil.rmtree(out, ignore_errors=True)
        raise
    (out / "shards").mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(settings, indent=2), manifest)
    tokenizer.save_pretrained(out)
    total = None if streaming else len(ds)
    if limit is not None:
        ds = ds.take(limit) if streaming else ds.select(range(min(limit, len(ds))))
        total = limit if total is None else min(limit, total)

    rows = ((str(row[ids]) if ids else f"row {i}", row[column]) for i, row in enumerate(ds))
    pool = None
    if num_proc > 1:
        pool = mp.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer.to_dict(), check, True))
    else:
        _init_worker(tokenizer.to_dict(), check)
    bar = tqdm(total=total, desc="tokenizing", unit="crystal", disable=not progress)
    try:
        for k, chunk in enumerate(_chunks(rows, shard_size)):
            shard = out / "shards" / f"shard-{k:05d}.parquet"
            failures_file = out / "shards" / f"failures-{k:05d}.csv"
            if shard.exists() and failures_file.exists():
                bar.update(len(chunk))
                continue
            mapper = pool.imap(_encode, chunk, chunksize=8) if pool else map(_encode, chunk)
            ok, bad = [], []
            for (_, crystal), result in zip(chunk, mapper):
                if "error" in result:
                    bad.append(result)
                else:
                    if keep_structure:
                        result[column] = crystal if isinstance(crystal, str) else json.dumps(crystal)
                    ok.append(result)
                bar.update(1)
            atomic_write_table(pd.DataFrame(ok, columns=_token_columns(keep_structure, column)), shard)
            atomic_write_table(pd.DataFrame(bad, columns=["id", "error_type", "error"]), failures_file)
    except BaseException:  # Ctrl-C: stop the workers now (close + join would wait for, or respawn, them)
        if pool is not None:
            pool.terminate()
            pool.join()
            pool = None
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()

    return _summarise(out, settings)


def _token_columns(keep_structure: bool, column: str) -> list[str]:
    columns = ["id", "G", "W", "A", "XYZ", "L", "num_sites", "num_atoms"]
    return columns + [column] if keep_structure else columns


def _summarise(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    failures = [pd.read_csv(p) for p in sorted((out / "shards").glob("failures-*.csv"))]
    failures = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame(columns=["id", "error_type"])
    atomic_write_table(failures, out / "failures.csv")
    import pyarrow.parquet as pq

    encoded = sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "shards").glob("shard-*.parquet"))
    summary = {
        **settings,
        "encoded": int(encoded),
        "failed": int(len(failures)),
        "failure_reasons": {str(k): int(v) for k, v in failures["error_type"].value_counts().items()},
    }
    atomic_write_text(json.dumps(summary, indent=2), out / "summary.json")
    return summary


def load_prepared(output_dir: str | os.PathLike, streaming: bool = False):
    """The tokens written by :func:`prepare_data` as a ``datasets`` dataset."""
    from datasets import load_dataset

    files = sorted(str(p) for p in (Path(output_dir) / "shards").glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{output_dir}: no prepared shards (run `crystalformer-rl prepare-data` first)")
    return load_dataset("parquet", data_files=files, split="train", streaming=streaming)
