"""Hub-native model folders (issue 36): `save_pretrained` writes everything a folder needs, remote code included, so
`AutoModel.from_pretrained(folder, trust_remote_code=True)` works without this package; the embedded default
folder is what `save_pretrained` writes now; `push_to_hub` uploads that folder; bad folders and checkpoints are
refused."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from crystalformer_rl.modeling_crystalformer import CrystalFormerForCrystalGeneration
from crystalformer_rl.modeling_crystalformer.convert_crystalformer_checkpoint import (
    load_crystalformer_checkpoint,
    write_converted_model_card,
)
from crystalformer_rl.modeling_crystalformer.hub_crystalformer import model_remote_code
from crystalformer_rl.pretrained import (
    DEFAULT_MODEL_PATH,
    ModelNotFoundError,
    load_model,
    refresh_model_folder,
    space_group_distribution,
)
from tests.helpers.rl_toy import tiny_model


REMOTE_CODE = {
    "configuration_crystalformer.py",
    "modeling_crystalformer.py",
    "sampling_crystalformer.py",
    "mcmc_crystalformer.py",
    "kv_cache_and_densities.py",
    "hub_crystalformer.py",
    "crystallography.py",
    "wyckoff.py",
    "wyckoff_tables_npz.py",
}
FOLDER = REMOTE_CODE | {
    "config.json",
    "model.safetensors",
    "tokenizer_config.json",
    "space_group_distribution.json",
    "README.md",
}
GROUPS = [225, 14, 62, 2, 194, 139, 12, 166, 221, 1]

# Run in a fresh interpreter where crystalformer_rl cannot be imported: the model folder's own code is all there is
# (and it imports none of the packages that only crystalformer-rl installs).
WITHOUT_THE_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    NOT_NEEDED = {"crystalformer_rl", "pymatgen", "pyxtal", "spglib", "ase", "trl", "datasets"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "crystalformer_rl":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Blocker())
    sys.path = [p for p in sys.path if p not in ("", ".")]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    out = model.sample(json.loads(sys.argv[2]), seed=7)
    again = model.double().log_prob(out.G, out.L, out.XYZ, out.A, out.W)  # float64: compared to 1e-6
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in NOT_NEEDED)
    print(json.dumps({
        "class": type(model).__module__,
        "tokens": {k: getattr(out, k).tolist() for k in ("G", "W", "A", "XYZ", "L")},
        "logp_sampler": out.logp.tolist(),
        "logp": again.logp.tolist(),
        "space_groups": len(model.space_group_distribution or {}),
        "blocked_modules_loaded": loaded,
    }))
    """
)


@pytest.fixture(scope="module")
def default_model():
    return load_model().eval()


def _float64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_default_folder_loads_and_samples_with_remote_code_only(tmp_path, default_model):
    """The acceptance test of issue 36: the embedded folder, loaded with trust_remote_code=True while the package is
    unimportable, samples 10 crystals whose log-likelihoods equal the package's `log_prob` to 1e-6."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_PACKAGE, str(DEFAULT_MODEL_PATH), json.dumps(GROUPS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["class"].startswith("transformers_modules.")  # the folder's code, not the package's
    assert out["blocked_modules_loaded"] == []
    assert out["space_groups"] == len(default_model.space_group_distribution) > 0
    tokens = out["tokens"]
    assert tokens["G"] == GROUPS
    ours = copy.deepcopy(default_model).double().log_prob(**{k: torch.tensor(v) for k, v in tokens.items()}).logp
    assert torch.allclose(_float64(out["logp"]), ours, rtol=0, atol=1e-6)
    assert torch.allclose(_float64(out["logp_sampler"]), ours, rtol=0, atol=1e-3)  # the sampler's, in float32
    # the same code: the package's sampler draws the same crystals for the same seed
    mine = default_model.sample(GROUPS, seed=7)
    assert mine.A.tolist() == tokens["A"] and mine.W.tolist() == tokens["W"]


def test_embedded_default_folder_is_what_save_pretrained_writes_now():
    """The remote code, config (auto_map), tokenizer config, space groups and card metadata of the shipped folder
    cannot drift from the package: regenerate with `refresh_model_folder()` when this fails."""
    assert refresh_model_folder(DEFAULT_MODEL_PATH, write=False) == []
    assert REMOTE_CODE <= {p.name for p in DEFAULT_MODEL_PATH.iterdir()}


def test_save_pretrained_writes_a_whole_model_folder(tmp_path, default_model):
    default_model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == FOLDER
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_crystalformer.CrystalFormerConfig",
        "AutoModel": "modeling_crystalformer.CrystalFormerForCrystalGeneration",
    }
    for name in ("tokenizer_config.json", "space_group_distribution.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((DEFAULT_MODEL_PATH / name).read_text())
    # issue 36 item 7: the saved folder keeps the training distribution of space groups
    assert space_group_distribution(tmp_path) == space_group_distribution(None)
    assert load_model(tmp_path).space_group_distribution == default_model.space_group_distribution
    # the remote code is the package's own modules, imports made flat
    for name, text in model_remote_code(default_model).items():
        assert (tmp_path / name).read_text() == text
        assert not re.search(r"^\s*from \.\.", text, re.MULTILINE)
    modeling = (tmp_path / "modeling_crystalformer.py").read_text()
    assert "from .crystallography import" in modeling and "from .wyckoff import WyckoffTables" in modeling
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "other"
    assert card.data.license == "apache-2.0" and "crystalformer" in card.data.tags
    assert "trust_remote_code=True" in card.text


def test_model_card_keeps_its_text_and_gets_metadata(tmp_path):
    (tmp_path / "README.md").write_text("---\nbase_model: /runs/base\n---\n# My model\n\nTrained on my crystals.\n")
    tiny_model().save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.text == "# My model\n\nTrained on my crystals.\n"
    assert card.data.base_model is None  # a local path: the Hub would refuse the card
    assert card.data.library_name == "transformers" and "custom_code" in card.data.tags
    # a new model has no tokenizer config of its own: the crystal tokenizer's, for its n_max
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {
        "tokenizer_class": "CrystalTokenizer",
        "n_max": 21,
    }
    assert not (tmp_path / "space_group_distribution.json").exists()


def test_one_name_for_the_space_group_file():
    from crystalformer_rl.modeling_crystalformer import hub_crystalformer
    from crystalformer_rl.pretrained import SPACE_GROUP_FILE

    assert SPACE_GROUP_FILE == hub_crystalformer.SPACE_GROUP_FILE


def test_a_folder_without_space_groups_warns(tmp_path, caplog):
    tiny_model().save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="crystalformer_rl.pretrained"):
        assert space_group_distribution(tmp_path) is None
    assert str(tmp_path) in caplog.text and "drawn uniformly" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crystalformer_rl.pretrained"):
        assert space_group_distribution(None)
    assert caplog.text == ""


def test_push_to_hub_uploads_the_model_folder(tmp_path, monkeypatch, default_model):
    """A local stand-in for the Hub API (`create_repo`, `upload_folder`): what would be uploaded, never the network.
    (Below `upload_folder`, huggingface_hub's upload path depends on whether hf_xet is installed.)"""
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = (repo_id, kwargs)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["upload"] = (repo_id, kwargs)
        calls["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        metadata = ModelCard(calls["files"]["README.md"].decode()).data  # what the Hub's validate-yaml reads
        assert metadata.library_name and metadata.tags and metadata.pipeline_tag and metadata.license
        return SimpleNamespace(commit_url=f"local://{repo_id}")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    default_model.push_to_hub("someone/crystalformer-test", private=True, token="hf_fake", commit_message="v1")
    assert calls["repo"] == ("someone/crystalformer-test", {"private": True, "exist_ok": True})
    assert calls["upload"][0] == "someone/crystalformer-test" and calls["upload"][1]["commit_message"] == "v1"
    assert set(calls["files"]) == FOLDER
    default_model.save_pretrained(tmp_path)
    for name in FOLDER:
        assert calls["files"][name] == (tmp_path / name).read_bytes(), name
    # save_pretrained(push_to_hub=True) uploads the folder it wrote
    calls.clear()
    default_model.save_pretrained(tmp_path / "again", push_to_hub=True, repo_id="someone/again")
    assert calls["repo"][0] == "someone/again" and set(calls["files"]) == FOLDER


def test_config_of_another_model_type_is_refused(tmp_path):
    """Issue 36 item 11: a config.json with model_type bert was loaded and sampled."""
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises((ValueError, ModelNotFoundError), match="'bert'") as error:
        load_model(tmp_path)
    assert str(tmp_path) in str(error.value) and "not a CrystalFormer" in str(error.value)
    with pytest.raises(ValueError, match="'bert'"):
        CrystalFormerForCrystalGeneration.from_pretrained(tmp_path)


def test_convert_refuses_nan_weights(tmp_path):
    """Issue 36 item 11: a checkpoint with NaN weights converted with exit 0."""
    from tests.test_convert_checkpoint import tiny_config, write_official_checkpoint

    model = CrystalFormerForCrystalGeneration(tiny_config())
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    path = tmp_path / "nan.pkl"
    write_official_checkpoint(path, model)
    with pytest.raises(ValueError, match="NaN") as error:
        load_crystalformer_checkpoint(path)
    assert str(path) in str(error.value) and "head.weight" in str(error.value)


def test_converted_card_names_its_base_model(tmp_path):
    from tests.test_convert_checkpoint import tiny_config, write_official_checkpoint

    path = tmp_path / "ckpt.pkl"
    write_official_checkpoint(path, CrystalFormerForCrystalGeneration(tiny_config()))
    model = load_crystalformer_checkpoint(path)
    model.save_pretrained(tmp_path / "local")
    card = ModelCard.load(tmp_path / "local" / "README.md")
    assert "converted from `ckpt.pkl`" in card.text and card.data.base_model is None
    write_converted_model_card(model, "alex20", tmp_path / "local")
    card = ModelCard.load(tmp_path / "local" / "README.md")
    assert card.data.base_model == "zdcao/CrystalFormer" and card.data.library_name == "transformers"


def test_element_symbols_are_pymatgens():
    from pymatgen.core.periodic_table import Element

    from crystalformer_rl.crystallography import element_symbols

    assert element_symbols() == ("X", *(Element.from_Z(z).symbol for z in range(1, 119)))


def test_run_folders_get_a_copy_of_the_reference_not_a_hard_link(tmp_path):
    """Issue 36 item 11: every RL run folder got reference_corpus.csv.gz as a hard link into the installed package,
    so editing it edited the package."""
    from crystalformer_rl.pretrained import model_reference
    from crystalformer_rl.trainers.utils import write_base_model_files

    write_base_model_files(None, tmp_path)
    copy, shipped = tmp_path / "reference_corpus.csv.gz", model_reference(None)
    assert copy.read_bytes() == shipped.read_bytes()
    assert not os.path.samefile(copy, shipped) and os.stat(copy).st_nlink == 1
