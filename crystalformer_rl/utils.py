"""Small helpers shared across the package."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import pandas as pd


def atomic_write_with(write: Callable[[Path], object], path: str | os.PathLike) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``, so a reader never sees half
    a file. For writers that only take a file name (pandas, pymatgen CIF, ASE extxyz, safetensors); the temporary
    name ends in ``.tmp``, so such a writer must not infer the format (or compression) from the name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # a failed or interrupted write leaves neither half a file nor its temporary
        tmp.unlink(missing_ok=True)
        raise
    return path


def content_sha256(path: str | os.PathLike) -> str | None:
    """SHA-256 of a local file's bytes, or of a folder's files (relative names and bytes, in name order); ``None``
    for anything else (a Hub id). A resume compares it, so an input replaced under the same name is not mixed in."""
    path = Path(path)
    if not path.exists():
        return None
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else "").encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write through a temporary file and a rename, so a reader never sees half a file."""
    return atomic_write_with(lambda tmp: tmp.write_bytes(data), path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """CSV or parquet by suffix, atomically."""
    if Path(path).suffix == ".parquet":
        return atomic_write_with(lambda tmp: frame.to_parquet(tmp, index=False), path)
    return atomic_write_with(lambda tmp: frame.to_csv(tmp, index=False), path)


#: a Hub repository id as the Hub validates it: owner/name, letters, digits, "-", "_", "." (no leading "-" or ".")
HUB_REPO_ID = r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}"


def is_hub_repo_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hub repository id (says nothing of whether it exists)."""
    return re.fullmatch(HUB_REPO_ID, text) is not None


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is switched off (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose public names (``exports``: name -> submodule, relative
    to ``package``) are imported on first use, so importing the package itself stays cheap."""
    import importlib

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__


def ignore_sigint() -> None:
    """Pool-worker initializer: Ctrl-C is the main process's to handle (it stops the pool); a worker that took it
    would print its own traceback, and the pool would respawn it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
