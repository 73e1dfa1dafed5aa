"""The package's front door: its version, its top-level names (imported on first use) and the Auto classes."""

import subprocess
import sys

import pytest


def test_version_and_top_level_names():
    import crystalformer_rl

    assert isinstance(crystalformer_rl.__version__, str) and crystalformer_rl.__version__
    from crystalformer_rl import CrystalRLConfig, CrystalTokenizer, CrystalTokens, load_model
    from crystalformer_rl.pretrained import load_model as pretrained_load_model
    from crystalformer_rl.tokenization import CrystalTokenizer as Tokenizer

    assert load_model is pretrained_load_model and CrystalTokenizer is Tokenizer and CrystalTokens.__name__
    assert CrystalRLConfig.__name__ == "CrystalRLConfig"
    assert set(crystalformer_rl.__all__) <= set(dir(crystalformer_rl)) | {"__version__"}
    with pytest.raises(AttributeError):
        crystalformer_rl.NotAName  # noqa: B018


def test_import_crystalformer_rl_registers_the_model_with_auto_classes(tmp_path):
    """``AutoModel.from_pretrained(folder)`` works after ``import crystalformer_rl`` alone (a fresh interpreter,
    so no other test's imports help), and the heavy layers (TRL, the trainers, pymatgen) stay unloaded; the import
    itself loads neither torch nor transformers (the registration waits for transformers' AutoConfig)."""
    from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration

    config = CrystalFormerConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, head_dim=8)
    CrystalFormerForCrystalGeneration(config).save_pretrained(tmp_path)
    script = (
        "import sys, crystalformer_rl\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
        "import transformers\n"
        f"model = transformers.AutoModel.from_pretrained({str(tmp_path)!r})\n"
        f"config = transformers.AutoConfig.from_pretrained({str(tmp_path)!r})\n"
        "print(type(model).__name__, type(config).__name__)\n"
        "print(sorted(m for m in ('trl', 'pymatgen', 'crystalformer_rl.trainers.crystal_rloo_trainer') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "CrystalFormerForCrystalGeneration CrystalFormerConfig"
    assert out[2] == "[]"


def test_auto_config_registration_when_transformers_is_imported_first(tmp_path):
    """Imported after transformers' AutoConfig, the package registers at once; ``AutoConfig.for_model`` and
    ``from_pretrained`` give the real config class."""
    from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig

    CrystalFormerConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, head_dim=8).save_pretrained(
        tmp_path
    )
    script = (
        "import transformers\n"
        "from transformers import AutoConfig\n"
        "import crystalformer_rl\n"
        "print(type(AutoConfig.for_model('crystalformer')).__name__)\n"
        f"print(type(AutoConfig.from_pretrained({str(tmp_path)!r})).__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["CrystalFormerConfig", "crystalformer_rl.modeling_crystalformer.configuration_crystalformer"]
