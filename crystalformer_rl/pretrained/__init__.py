"""The embedded default model and one loader for every way of naming a model.

``load_model(None)`` gives the default model shipped inside the package; ``load_model(x)`` takes a local
folder saved with ``save_pretrained``, a Hub id (``user/model``), an official CrystalFormer pickle checkpoint
(``epoch_005500.pkl``), an alias of the official checkpoints (``alex20``), or the Hub form of an official
checkpoint (``zdcao/CrystalFormer/alex20/PBE/epoch_005500.pkl``, :data:`OFFICIAL_ALEX20`; ``owner/repo:path.pkl`` also
works).

A model folder may carry the crystals it was trained on (:data:`REFERENCE_FILES`) so that novelty is judged
against its own training set; the embedded model uses the training corpus shipped with the package
(:data:`SHIPPED_REFERENCE`, see ``crystalformer_rl/data/reference/README.md``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..utils import first_line, hub_offline, is_hub_repo_id


logger = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = Path(__file__).with_name("default")
#: the space-group counts of a model's training data in its folder (written by ``save_pretrained``; the name is
#: ``modeling_crystalformer.hub_crystalformer.SPACE_GROUP_FILE``, repeated here so that importing this module stays
#: light, and checked equal by the tests)
SPACE_GROUP_FILE = "space_group_distribution.json"
#: the official Alex-20 checkpoint in the form every loader takes (``load_model``, ``load_crystalformer_checkpoint``,
#: ``convert``); ``load_model`` also accepts ``owner/repo:path.pkl``
OFFICIAL_ALEX20 = "zdcao/CrystalFormer/alex20/PBE/epoch_005500.pkl"
#: the corpus of the embedded model (train + validation, test-safe for MP-20): 38,232 Materials Project crystals as
#: token strings
SHIPPED_REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference" / "mp_corpus_test_safe.csv.gz"
#: file names a model folder may carry its novelty reference (training crystals) under, in order of preference
REFERENCE_FILES = ("reference_corpus.csv.gz", "reference_corpus.parquet")


class ModelNotFoundError(FileNotFoundError):
    """No model under that name: neither a local folder or checkpoint nor a Hub model that can be loaded."""


def _is_default(name_or_path) -> bool:
    return name_or_path is None or str(name_or_path) == "default"


def load_model(name_or_path: str | os.PathLike | None = None, **kwargs):
    """Load a CrystalFormer model (see the module docstring for the accepted names).

    Raises:
        ModelNotFoundError: the name is neither an existing folder / file nor a reachable Hub model; the message
            says which, so the command line can print it as one line.
    """
    from ..modeling_crystalformer import CrystalFormerForCrystalGeneration
    from ..modeling_crystalformer.convert_crystalformer_checkpoint import (
        OFFICIAL_CHECKPOINTS,
        load_crystalformer_checkpoint,
    )

    hint = "pass a folder saved with save_pretrained, a Hub id (user/model) or an official .pkl checkpoint"
    if _is_default(name_or_path):
        if not (DEFAULT_MODEL_PATH / "config.json").exists():
            raise ModelNotFoundError(
                f"the embedded default model is missing from {DEFAULT_MODEL_PATH}; reinstall the package or {hint}"
            )
        return CrystalFormerForCrystalGeneration.from_pretrained(DEFAULT_MODEL_PATH, **kwargs)
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".pkl":
            raise ModelNotFoundError(f"model {text}: a file that is not a .pkl checkpoint; {hint}")
        return load_crystalformer_checkpoint(str(path), **kwargs)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model {text}: the folder has no config.json; {hint}")
        return CrystalFormerForCrystalGeneration.from_pretrained(path, **kwargs)
    # Not on disk: a Hub name. Check its form first, so a mistyped path does not read as a bad repo id.
    repo = text.removeprefix("hf://").replace(":", "/", 1)  # owner/repo:path.pkl -> owner/repo/path.pkl
    hub_checkpoint = text in OFFICIAL_CHECKPOINTS or text.endswith(".pkl")
    if text in OFFICIAL_CHECKPOINTS:
        hub_name = True
    elif hub_checkpoint:
        hub_name = repo.count("/") >= 2 and is_hub_repo_id("/".join(repo.split("/")[:2]))
    else:
        hub_name = is_hub_repo_id(text)
    if not hub_name:
        raise ModelNotFoundError(f"model {text}: no such folder or file, and not a Hub id; {hint}")
    try:
        if hub_checkpoint:
            return load_crystalformer_checkpoint(text if text in OFFICIAL_CHECKPOINTS else repo, **kwargs)
        return CrystalFormerForCrystalGeneration.from_pretrained(text, **kwargs)
    except OSError as exc:  # offline, unknown repository, missing file: all OSError subclasses on the Hub path
        reason = (
            "the Hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache"
            if hub_offline()
            else first_line(exc)
        )
        raise ModelNotFoundError(f"model {text}: no such folder or file, and {reason}; {hint}") from exc


def space_group_distribution(name_or_path: str | os.PathLike | None = None) -> dict[int, int] | None:
    """Space-group counts of the model's training data, if the model (a local folder, or a Hub model in reach)
    carries them (:data:`SPACE_GROUP_FILE`); ``None``, with a warning naming the model, if not."""
    from ..modeling_crystalformer.hub_crystalformer import find_model_file, read_space_group_distribution

    name = DEFAULT_MODEL_PATH if _is_default(name_or_path) else str(name_or_path)
    path = None
    if Path(name).expanduser().is_dir() or is_hub_repo_id(str(name)):
        try:
            path = find_model_file(name, SPACE_GROUP_FILE)
        except OSError:  # a Hub model out of reach
            path = None
    if path is None:
        logger.warning(
            "model %s carries no %s: space groups not given are drawn uniformly from 1..230", name, SPACE_GROUP_FILE
        )
        return None
    return read_space_group_distribution(path)


def _same_file(a: Path, b: Path) -> bool:
    """Equal bytes; for ``config.json`` equal contents but for the transformers version that wrote it."""
    if not (a.is_file() and b.is_file()):
        return False
    if a.name == "config.json":
        return {**json.loads(a.read_text()), "transformers_version": None} == {
            **json.loads(b.read_text()),
            "transformers_version": None,
        }
    return a.read_bytes() == b.read_bytes()


def refresh_model_folder(folder: str | os.PathLike = DEFAULT_MODEL_PATH, write: bool = True) -> list[str]:
    """Load the model of ``folder`` and save it again as ``save_pretrained`` writes a folder now (remote code,
    ``auto_map``, tokenizer config, space-group distribution, model-card metadata; a card's text is kept), on a
    copy of the folder. Returns the names of the files that this changes or adds (``config.json`` counts as
    unchanged if only its ``transformers_version`` differs); ``write`` copies them into ``folder``.

    The embedded default model is kept up to date with ``python -c "from crystalformer_rl.pretrained import
    refresh_model_folder; print(refresh_model_folder())"``; the tests check that this changes nothing.
    """
    import shutil
    import tempfile

    from ..modeling_crystalformer import CrystalFormerForCrystalGeneration

    folder = Path(folder)
    model = CrystalFormerForCrystalGeneration.from_pretrained(folder)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / folder.name
        shutil.copytree(folder, work)
        model.save_pretrained(work)
        del model  # its weights may be mapped from the file about to be replaced
        changed = [p.name for p in sorted(work.iterdir()) if not _same_file(p, folder / p.name)]
        if write:
            for name in changed:
                shutil.copyfile(work / name, folder / name)
    return changed


def model_reference(name_or_path: str | os.PathLike | None = None) -> Path | None:
    """The novelty reference (training crystals) a model carries, ``None`` if it carries none.

    A local model folder's :data:`REFERENCE_FILES`; the embedded model falls back to :data:`SHIPPED_REFERENCE`,
    the corpus it was trained on. Hub models and checkpoints carry none here: pass their training set explicitly.
    """
    folder = DEFAULT_MODEL_PATH if _is_default(name_or_path) else Path(str(name_or_path)).expanduser()
    if folder.is_dir():
        for name in REFERENCE_FILES:
            if (folder / name).is_file():
                return folder / name
    if _is_default(name_or_path) and SHIPPED_REFERENCE.is_file():
        return SHIPPED_REFERENCE
    return None


__all__ = [
    "DEFAULT_MODEL_PATH",
    "OFFICIAL_ALEX20",
    "REFERENCE_FILES",
    "SHIPPED_REFERENCE",
    "ModelNotFoundError",
    "load_model",
    "model_reference",
    "refresh_model_folder",
    "space_group_distribution",
]
