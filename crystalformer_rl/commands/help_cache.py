"""A command's ``--help`` text, kept on disk after it is first built.

Building the help of a trainer means importing its config class, and with it TRL, transformers and torch
(about 1.5 s of imports for ``rl --help``, which lists some 200 `TrainingArguments`). The text depends only on the
package's sources, the versions of those libraries and the terminal width, so it is stored under a key made of
them (``~/.cache/crystalformer_rl/help/``, or ``$XDG_CACHE_HOME``) and printed from there until one of them changes.
Reading and writing are best-effort: an unreadable or unwritable cache only means the help is built again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1]
LIBRARIES = ("transformers", "trl", "torch", "accelerate", "huggingface-hub")


def wants_help(args: list[str]) -> bool:
    """Whether a command's argument list asks for its help (``-h`` / ``--help`` before any ``--``)."""
    for arg in args:
        if arg == "--":
            return False
        if arg in ("-h", "--help"):
            return True
    return False


def _key(command: str) -> str:
    parts = [command, str(shutil.get_terminal_size().columns), os.environ.get("COLUMNS", "")]
    for library in LIBRARIES:
        try:
            parts.append(f"{library}={version(library)}")
        except PackageNotFoundError:
            parts.append(f"{library}=none")
    for path in sorted(PACKAGE.rglob("*.py")):
        stat = path.stat()
        parts.append(f"{path.relative_to(PACKAGE)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _path(command: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "crystalformer_rl" / "help" / f"{command}-{_key(command)}.txt"


def read(command: str) -> str | None:
    """The stored help of ``command``, if it is still current."""
    try:
        return _path(command).read_text(encoding="utf-8")
    except OSError:
        return None


def write(command: str, text: str) -> None:
    """Store the help of ``command`` (older versions of it are removed)."""
    try:
        path = _path(command)
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{command}-*.txt"):
            old.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
