"""Reading crystals to evaluate (folders of CIFs, extxyz, tables of CIFs or token strings) and atomic writes.

Every reader returns one entry per input crystal, failures included: a sample that cannot be decoded is an
invalid sample, and dropping it would inflate every rate computed afterwards.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from ..tokenization import TOKEN_FIELDS, CrystalTokens, to_structure
from ..utils import atomic_write_bytes, atomic_write_table, atomic_write_text


logger = logging.getLogger(__name__)

__all__ = [
    "LoadedCrystals",
    "atomic_write_bytes",
    "atomic_write_table",
    "atomic_write_text",
    "load_crystals",
    "read_table",
    "structure_from_record",
]

#: columns read as the crystal, in order of preference
STRUCTURE_COLUMNS = ("cif", "structure", "tokens")
ID_COLUMNS = ("id", "material_id", "name", "mat_id")
#: token arrays of a prepared dataset or corpus row; used when no text column is present
TOKEN_ARRAY_COLUMNS = TOKEN_FIELDS
TOKEN_ARRAYS = "G,W,A,XYZ,L"
#: keys of a parquet file's metadata or of a side-car JSON that give the wall time spent sampling
SAMPLING_TIME_KEYS = ("sampling_seconds", "sampling_time_s", "sampling_time", "wall_seconds")
_TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".json", ".jsonl")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


@dataclass
class LoadedCrystals:
    """Crystals read from a source: ``structures[i]`` is ``None`` when ``errors[i]`` says why it could not be built."""

    names: list[str]
    structures: list[Structure | None]
    errors: list[str | None]
    extra: pd.DataFrame | None = None  # other scalar columns of a table input, one row per crystal
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.structures)

    @property
    def sampling_seconds(self) -> float | None:
        for key in SAMPLING_TIME_KEYS:
            value = self.metadata.get(key)
            if value is not None:
                try:
                    return float(value)
                except (TypeError, ValueError):
                    continue
        return None


# ------------------------------------------------------------------------------------------------ reads
def _is_table(path: Path) -> bool:
    suffixes = [s for s in path.suffixes if s not in _COMPRESSION_SUFFIXES]
    return bool(suffixes) and suffixes[-1] in _TABLE_SUFFIXES


def read_table(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A CSV / parquet / JSON(L) table and its metadata (parquet key-value metadata, then a side-car JSON)."""
    path = Path(path)
    suffixes = [s for s in path.suffixes if s not in _COMPRESSION_SUFFIXES]
    kind = suffixes[-1] if suffixes else ""
    metadata: dict[str, Any] = {}
    if kind in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for key, value in (table.schema.metadata or {}).items():
            key, value = key.decode(), value.decode()
            if key == "pandas":
                continue
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value
            if isinstance(decoded, dict):
                metadata.update(decoded)
            metadata[key] = decoded
        frame = table.to_pandas()
    elif kind == ".csv":
        frame = pd.read_csv(path)
    elif kind == ".jsonl":
        frame = pd.read_json(path, lines=True)
    elif kind == ".json":
        try:
            frame = pd.read_json(path, orient="split")
        except ValueError:
            frame = pd.read_json(path)
    else:
        raise ValueError(f"{path}: unsupported table type; use CSV, parquet or JSON (optionally compressed)")
    metadata = {**_sidecar_metadata(path), **metadata}
    frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("Unnamed: ")])
    return frame, metadata


def _sidecar_metadata(path: Path) -> dict[str, Any]:
    """``samples.csv`` may carry ``samples.csv.meta.json`` or ``samples.meta.json`` (e.g. the sampling time)."""
    stem = path.name
    for suffix in path.suffixes:
        stem = stem.removesuffix(suffix)
    for candidate in (path.with_name(path.name + ".meta.json"), path.with_name(stem + ".meta.json")):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except ValueError as exc:
                logger.warning("%s: unreadable metadata (%s)", candidate, exc)
                continue
            if isinstance(data, dict):
                return data
    return {}


def _folder_metadata(path: Path) -> dict[str, Any]:
    for name in ("meta.json", "metadata.json"):
        candidate = path / name
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return _sampler_record(path)


def _sampler_record(path: Path) -> dict[str, Any]:
    """``crystalformer-rl sample``'s ``sampling.json`` beside ``cifs/`` or ``samples.extxyz``, when it names ``path``
    among the files it wrote (the sampling time, the model and the number of crystals asked for)."""
    record = path.parent / "sampling.json"
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    # the record's paths are as the sampler was given them (often relative): compare the last two parts
    written = (
        {(Path(str(f)).parent.name, Path(str(f)).name) for f in files.values()} if isinstance(files, dict) else ()
    )
    if (path.parent.name, path.name) not in written and ("", path.name) not in written:
        return {}
    return data


def _warn_if_incomplete(loaded: LoadedCrystals, path: Path, limit: int | None) -> LoadedCrystals:
    """CIF folders and extxyz files hold only the crystals that decoded: say so when the sampler asked for more,
    since every fraction is then over the decoded crystals only."""
    asked = loaded.metadata.get("num_samples") if loaded.metadata else None
    if limit is None and isinstance(asked, int) and asked > len(loaded.structures):
        logger.warning(
            "%s holds %d of the %d crystals sampled (undecodable ones are not written there): fractions are over "
            "these %d; evaluate the samples table (samples.csv) for fractions of all samples",
            path,
            len(loaded.structures),
            asked,
            len(loaded.structures),
        )
    return loaded


def structure_from_record(value: Any, column: str) -> Structure:
    """Build a structure from one table cell. The column decides only for token arrays (``G, W, A, XYZ, L``) and
    the ``tokens`` column; every other cell (CIF text, a pymatgen dict or its JSON, a token string, ...) goes
    through the package's one converter, :func:`crystalformer_rl.tokenization.to_structure`."""
    if column in ("tokens", TOKEN_ARRAYS) and not isinstance(value, Structure):
        return tokens_from_record(value, column).to_structure()
    if (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    ):
        raise ValueError(f"empty {column!r} cell")
    return to_structure(value, files=False)  # a cell holding a path is no crystal: no local file is opened


def tokens_from_record(value: Any, column: str):
    """``CrystalTokens`` from a token string, or from a row's G, W, A, XYZ, L arrays (as parquet returns them)."""
    if column == "tokens":
        return CrystalTokens.from_string(str(value))
    xyz = [np.asarray(v, dtype=float).reshape(3) for v in value["XYZ"]]
    return CrystalTokens.from_sites(
        int(value["G"]),
        [int(w) for w in value["W"]],
        [int(a) for a in value["A"]],
        np.stack(xyz) if xyz else np.zeros((0, 3)),
        np.asarray(value["L"], dtype=float),
    )


def _crystal_column(columns: Sequence[str], prefer: str | None = None) -> str:
    if prefer is not None:
        if prefer not in columns and not (prefer == TOKEN_ARRAYS and set(TOKEN_ARRAY_COLUMNS) <= set(columns)):
            raise ValueError(f"no column {prefer!r}; found {list(columns)}")
        return prefer
    for column in STRUCTURE_COLUMNS:
        if column in columns:
            return column
    if set(TOKEN_ARRAY_COLUMNS) <= set(columns):
        return TOKEN_ARRAYS
    raise ValueError(
        f"no crystal column: expected one of {STRUCTURE_COLUMNS} or the token arrays {TOKEN_ARRAY_COLUMNS}, "
        f"found {list(columns)}"
    )


def _column_values(frame: pd.DataFrame, column: str) -> list[Any]:
    if column == TOKEN_ARRAYS:
        return frame[list(TOKEN_ARRAY_COLUMNS)].to_dict("records")
    return frame[column].tolist()


def _build_all(values: Sequence[Any], column: str, names: Sequence[str], progress: bool):
    from tqdm.auto import tqdm

    structures: list[Structure | None] = []
    errors: list[str | None] = []
    for name, value in tqdm(
        zip(names, values), total=len(names), desc="reading crystals", unit="crystal", disable=not progress
    ):
        try:
            structures.append(structure_from_record(value, column))
            errors.append(None)
        except Exception as exc:  # one undecodable sample is a result (invalid), not a crash
            structures.append(None)
            errors.append(f"could not build structure from {column!r}: {type(exc).__name__}: {exc}")
            logger.debug("%s: %s", name, errors[-1])
    return structures, errors


def load_crystals(
    source: str | os.PathLike | Sequence[Structure],
    column: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> LoadedCrystals:
    """Read crystals from a folder of CIFs, a CIF / extxyz / POSCAR file, a table, or a list of Structures.

    Tables (CSV, parquet, JSON; optionally compressed) need a crystal column: ``cif``,
    ``structure`` (pymatgen dict) or ``tokens`` (CrystalFormer token strings), else the token arrays ``G, W, A,
    XYZ, L`` of a prepared dataset, or the column named by ``column``
    (e.g. ``relaxed_cif`` of an earlier evaluation).
    Other scalar columns are kept in ``extra`` (e.g. properties to plot). The sampling wall time is read from
    parquet metadata or a side-car ``<file>.meta.json`` (keys :data:`SAMPLING_TIME_KEYS`).
    """
    if not isinstance(source, (str, os.PathLike)):
        structures = list(source)[:limit] if limit is not None else list(source)
        built: list[Structure | None] = []
        errors: list[str | None] = []
        for s in structures:
            if isinstance(s, Structure):
                built.append(s)
                errors.append(None)
            else:
                try:
                    built.append(structure_from_record(s, column or "cif"))
                    errors.append(None)
                except Exception as exc:
                    built.append(None)
                    errors.append(f"could not build structure: {type(exc).__name__}: {exc}")
        return LoadedCrystals([f"{i}" for i in range(len(built))], built, errors)

    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".cif", ".vasp"))
        files += sorted(p for p in path.iterdir() if p.name.startswith(("POSCAR", "CONTCAR")))
        files = list(dict.fromkeys(files))
        if not files:
            raise FileNotFoundError(f"{path}: no .cif files")
        files = files[:limit] if limit is not None else files
        names = [p.stem for p in files]
        structures, errors = _build_all([p.read_text() for p in files], "cif", names, progress)
        for i, p in enumerate(files):  # non-CIF files: let pymatgen guess the format
            if errors[i] is not None and p.suffix.lower() != ".cif":
                try:
                    structures[i], errors[i] = Structure.from_file(p), None
                except Exception as exc:
                    errors[i] = f"could not read {p.name}: {type(exc).__name__}: {exc}"
        return _warn_if_incomplete(
            LoadedCrystals(names, structures, errors, metadata=_folder_metadata(path)), path, limit
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")

    if _is_table(path):
        frame, metadata = read_table(path)
        if limit is not None:
            frame = frame.iloc[:limit]
        col = _crystal_column(list(frame.columns), column)
        ids = next((c for c in ID_COLUMNS if c in frame.columns), None)
        names = [str(v) for v in frame[ids]] if ids else [str(i) for i in range(len(frame))]
        structures, errors = _build_all(_column_values(frame, col), col, names, progress)
        skip = {*STRUCTURE_COLUMNS, "relaxed_cif", col, *(TOKEN_ARRAY_COLUMNS if col == TOKEN_ARRAYS else ())}
        keep = [
            c
            for c in frame.columns
            if c not in skip and c != ids and frame[c].map(lambda v: v is None or pd.api.types.is_scalar(v)).all()
        ]
        extra = frame[keep].reset_index(drop=True) if keep else None
        return LoadedCrystals(names, structures, errors, extra=extra, metadata=metadata)

    name = path.name.lower()
    if name.endswith((".extxyz", ".xyz", ".traj")):
        import ase.io
        from pymatgen.io.ase import AseAtomsAdaptor

        frames = ase.io.read(path, index=":" if limit is None else f":{limit}")
        structures, errors = [], []
        for atoms in frames:
            try:
                structures.append(AseAtomsAdaptor.get_structure(atoms))
                errors.append(None)
            except Exception as exc:  # e.g. a frame without a cell
                structures.append(None)
                errors.append(f"could not build structure: {type(exc).__name__}: {exc}")
        names = [f"{path.stem}-{i}" for i in range(len(structures))]
        metadata = _sidecar_metadata(path) or _sampler_record(path)
        return _warn_if_incomplete(LoadedCrystals(names, structures, errors, metadata=metadata), path, limit)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structure, error = Structure.from_file(path), None
        except Exception as exc:
            structure, error = None, f"could not read {path.name}: {type(exc).__name__}: {exc}"
    return LoadedCrystals([path.stem], [structure], [error], metadata=_sidecar_metadata(path))
