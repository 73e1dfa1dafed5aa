"""An evaluation's relaxations, written chunk by chunk as they finish, so that an interrupted ``evaluate --relax``
keeps them and a resumed one relaxes only the rest.

The folder (``relaxed/`` in the output folder) holds ``manifest.json`` (what the relaxations were made from: a
fingerprint of the input crystals and the relaxation settings) and one ``chunk-NNNNN.parquet`` per finished chunk,
each written atomically, with a row per crystal: its index in the input (``index``), ``name``, ``relaxed_cif``,
``energy_relaxed`` (eV, total), ``relax_steps``, ``relax_converged``, ``relax_reason`` (why it has no relaxed
structure), ``e_hull_relaxed`` and ``e_hull_relaxed_reason``, and ``chunk_seconds`` (the chunk's wall time).
A resume with another input or other settings is refused (:class:`~crystalformer_rl.errors.UsageError`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from ..errors import UsageError
from ..utils import atomic_write_table, atomic_write_text


__all__ = ["RELAXED_COLUMNS", "RelaxedChunks", "crystals_fingerprint"]

#: the columns of a chunk file (besides ``index``, ``name`` and ``chunk_seconds``), as the evaluation table has them
RELAXED_COLUMNS = (
    "relaxed_cif",
    "energy_relaxed",
    "relax_steps",
    "relax_converged",
    "relax_reason",
    "e_hull_relaxed",
    "e_hull_relaxed_reason",
)
MANIFEST = "manifest.json"


def crystals_fingerprint(structures: Sequence[Structure | None], names: Sequence[str]) -> str:
    """A SHA-256 of the crystals in order (name, species, lattice and fractional coordinates to 1e-6)."""
    digest = hashlib.sha256()
    for name, s in zip(names, structures):
        if s is None:
            record: Any = [str(name), None]
        else:
            record = [
                str(name),
                [str(site.species) for site in s],
                np.round(s.lattice.matrix, 6).tolist(),
                np.round(s.frac_coords, 6).tolist(),
            ]
        digest.update(json.dumps(record).encode())
        digest.update(b"\n")
    return digest.hexdigest()


class RelaxedChunks:
    """The chunk files of one evaluation's relaxations (see the module docstring).

    Args:
        folder: where the manifest and chunks go (``OUTPUT_DIR/relaxed``).
        settings: what the relaxed results depend on besides the input (relaxation options, the potential, the
            screen); a resume with other values is refused. The evaluation adds the input's fingerprint.
        resume: continue from the chunks already in ``folder`` (without it, a folder holding chunks is refused).
    """

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any] | None = None, resume: bool = False):
        self.folder = Path(folder)
        self.settings = dict(settings or {})
        self.resume = resume
        self.manifest: dict[str, Any] | None = None
        self._next = 0

    def open(self, fingerprint: str, n_crystals: int) -> dict[int, dict[str, Any]]:
        """Check the folder against this input and these settings; return the finished rows by input index.

        Writes nothing: the manifest goes with the first chunk, so a run that fails before it leaves nothing."""
        self.manifest = {"input_sha256": fingerprint, "n_crystals": int(n_crystals), "settings": self.settings}
        path = self.folder / MANIFEST
        chunks = sorted(self.folder.glob("chunk-*.parquet"))
        if not path.is_file():
            if chunks:
                raise UsageError(f"{self.folder}: chunk files without {MANIFEST}; remove the folder or overwrite it")
            return {}
        if not self.resume:
            raise UsageError(f"{self.folder}: holds the relaxations of an earlier run; resume or overwrite it")
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: unreadable ({exc}); remove the folder or overwrite it") from exc
        self._check(earlier)
        rows: dict[int, dict[str, Any]] = {}
        for chunk in chunks:
            frame = pd.read_parquet(chunk)
            for record in frame.to_dict("records"):
                index = int(record["index"])
                if not 0 <= index < n_crystals:
                    raise UsageError(f"{chunk}: crystal index {index} outside the input's {n_crystals}")
                rows[index] = {k: _plain(v) for k, v in record.items()}
        self._next = 1 + max((int(p.stem.split("-")[1]) for p in chunks), default=-1)
        return rows

    def _check(self, earlier: dict[str, Any]) -> None:
        now = self.manifest or {}
        if earlier.get("input_sha256") != now.get("input_sha256") or earlier.get("n_crystals") != now.get(
            "n_crystals"
        ):
            raise UsageError(
                f"{self.folder}: its relaxations are of another input ({earlier.get('n_crystals')} crystals, not "
                f"these {now.get('n_crystals')}); resume with the same input (and --limit), or overwrite it"
            )
        before, after = earlier.get("settings", {}), now.get("settings", {})
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                raise UsageError(
                    f"{self.folder}: its relaxations were made with --{key} {before.get(key)}, not "
                    f"{after.get(key)}; resume with the same relaxation settings, or overwrite it"
                )

    def write(self, rows: list[dict[str, Any]]) -> Path:
        """Write one finished chunk (a row per crystal, with ``index``) atomically; the manifest with the first."""
        if self.manifest is None:
            raise RuntimeError("RelaxedChunks.open() first")
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            atomic_write_text(json.dumps(self.manifest, indent=2) + "\n", manifest)
        frame = pd.DataFrame(rows, columns=["index", "name", *RELAXED_COLUMNS, "chunk_seconds"])
        frame["index"] = frame["index"].astype("int64")
        frame["relax_steps"] = pd.array(frame["relax_steps"], dtype="Int64")
        frame["relax_converged"] = pd.array(frame["relax_converged"], dtype="boolean")
        for column in ("energy_relaxed", "e_hull_relaxed", "chunk_seconds"):
            frame[column] = pd.array(pd.to_numeric(frame[column], errors="coerce"), dtype="Float64")
        for column in ("name", "relaxed_cif", "relax_reason", "e_hull_relaxed_reason"):
            frame[column] = frame[column].astype("string")
        path = atomic_write_table(frame, self.folder / f"chunk-{self._next:05d}.parquet")
        self._next += 1
        return path


def _plain(value: Any) -> Any:
    """A parquet cell as a plain Python value (``None`` for a missing one)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
