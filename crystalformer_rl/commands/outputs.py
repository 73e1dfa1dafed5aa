"""Output folders of the commands: checked before any work starts (a folder, writable), and never mixed with an
earlier run's files: a folder holding another run is refused unless the command is told to overwrite it (its own
earlier outputs are then removed first) or to resume it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError


__all__ = [
    "SAMPLE_OUTPUTS",
    "MCMC_OUTPUTS",
    "EVALUATE_OUTPUTS",
    "PREPARE_OUTPUTS",
    "TRAINING_OUTPUTS",
    "check_output_dir",
]

# What each command writes (glob patterns relative to its output folder): an earlier run is recognised by these, and
# --overwrite removes exactly these (a user's other files in the folder are left alone).
SAMPLE_OUTPUTS = ("samples.csv", "samples.csv.meta.json", "sampling.json", "cifs", "samples.extxyz")
MCMC_OUTPUTS = (*SAMPLE_OUTPUTS, "mcmc.json")
EVALUATE_OUTPUTS = (
    "structures.csv",
    "structures.parquet",
    "space_groups.csv",
    "summary.json",
    "ehull_histogram.png",
    "space_groups.png",
    "space_group_rates.png",
    "scatter_*.png",
    "relaxed",
)
PREPARE_OUTPUTS = ("shards", "failures.csv", "summary.json", "manifest.json", "tokenizer_config.json")
TRAINING_OUTPUTS = ("checkpoint-*", "model.safetensors", "trainer_state.json", "log_history.json")


def _writable_parent(path: Path) -> Path:
    """The nearest existing folder at or above ``path`` (where the folder will be created)."""
    probe = path.absolute()
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    return probe


def check_writable(path: str | os.PathLike, option: str) -> None:
    """A one-line `UsageError` unless ``path`` is (or can become) a writable folder; creates nothing."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {path}: a file, not a folder; pass a folder (it is created if missing)")
    parent = _writable_parent(folder)
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is a file, not a folder; pass another output folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise UsageError(
            f"{option} {path}: not writable ({parent}: {exc.strerror or exc}); pass another folder"
        ) from None


def earlier_outputs(path: str | os.PathLike, patterns: Sequence[str]) -> list[Path]:
    """The files and folders of ``patterns`` present in ``path``."""
    folder = Path(path)
    if not folder.is_dir():
        return []
    return sorted({p for pattern in patterns for p in folder.glob(pattern)})


def remove_outputs(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def check_output_dir(
    path: str | os.PathLike,
    option: str,
    patterns: Sequence[str],
    *,
    overwrite: bool = False,
    overwrite_flag: str = "--overwrite",
    resume: bool = False,
    resume_flag: str | None = None,
) -> list[Path]:
    """Check the output folder of a command before any work starts; returns the earlier run's outputs found there.

    A file, or a folder that cannot be written, is a one-line `UsageError`. A folder holding an earlier run's
    outputs (``patterns``) is refused unless ``overwrite`` (they are removed now) or ``resume`` (they are kept for
    the command to continue from)."""
    check_writable(path, option)
    found = earlier_outputs(path, patterns)
    if found and not overwrite and not resume:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        fix = f"pass {overwrite_flag} to replace it" + (f" or {resume_flag} to continue it" if resume_flag else "")
        raise UsageError(f"{option} {path}: holds an earlier run ({names}); {fix}, or choose another folder")
    if found and overwrite:
        remove_outputs(found)
        return []
    return found
