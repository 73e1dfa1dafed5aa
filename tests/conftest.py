import os
from pathlib import Path

import pytest


# No Hub access in tests: look-ups would stall on retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        raise FileNotFoundError(f"the tests read real data from {SHARED}, which is missing")
    return SHARED


@pytest.fixture(scope="module")
def train():
    """The MP-20 pilot training split (real Materials Project crystals with CIFs)."""
    import pandas as pd

    return pd.read_csv(SHARED / "data" / "mp20_pilot" / "train.csv.gz")


@pytest.fixture(scope="module")
def val():
    """The MP-20 pilot validation split."""
    import pandas as pd

    return pd.read_csv(SHARED / "data" / "mp20_pilot" / "val.csv.gz")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random CrystalFormer saved as a model folder (seconds to sample or train)."""
    from tests.helpers.rl_toy import tiny_model

    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model().save_pretrained(folder)
    return folder
