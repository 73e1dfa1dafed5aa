"""The embedded default model and one loader for every way of naming a model.

``load_model(None)`` gives the default model shipped inside the package; ``load_model(x)`` takes a local
folder saved with ``save_pretrained``, a Hub id (``user/model``), an official CrystalFormer pickle checkpoint
(``epoch_005500.pkl``), or the Hub form of an official checkpoint (``zdcao/CrystalFormer:alex20/PBE/epoch_005500.pkl``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


DEFAULT_MODEL_PATH = Path(__file__).with_name("default")
SPACE_GROUP_FILE = "space_group_distribution.json"
OFFICIAL_ALEX20 = "zdcao/CrystalFormer:alex20/PBE/epoch_005500.pkl"


def load_model(name_or_path: str | os.PathLike | None = None, **kwargs):
    """Load a CrystalFormer model (see the module docstring for the accepted names)."""
    from ..modeling_crystalformer import CrystalFormerForCrystalGeneration

    if name_or_path is None or str(name_or_path) == "default":
        if not (DEFAULT_MODEL_PATH / "config.json").exists():
            raise FileNotFoundError(
                f"the embedded default model is missing from {DEFAULT_MODEL_PATH}; reinstall the package or pass "
                "--model (a folder, a Hub id or an official CrystalFormer checkpoint)"
            )
        return CrystalFormerForCrystalGeneration.from_pretrained(DEFAULT_MODEL_PATH, **kwargs)
    text = str(name_or_path)
    if text.endswith(".pkl"):
        return CrystalFormerForCrystalGeneration.from_crystalformer_checkpoint(text, **kwargs)
    return CrystalFormerForCrystalGeneration.from_pretrained(text, **kwargs)


def space_group_distribution(name_or_path: str | os.PathLike | None = None) -> dict[int, int] | None:
    """Space-group counts of the model's training data, if the model folder carries them."""
    folder = DEFAULT_MODEL_PATH if name_or_path in (None, "default") else Path(str(name_or_path))
    path = folder / SPACE_GROUP_FILE
    if not path.is_file():
        return None
    return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}


__all__ = ["DEFAULT_MODEL_PATH", "OFFICIAL_ALEX20", "load_model", "space_group_distribution"]
