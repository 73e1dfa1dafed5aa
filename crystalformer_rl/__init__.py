"""CrystalFormer-RL: the CrystalFormer crystal generative model on the Hugging Face stack, and its RL fine-tuning.

The names most used are here, imported on first use::

    import crystalformer_rl as cf

    model = cf.load_model()                           # the embedded default model
    tokens = cf.CrystalTokenizer().encode(structure)  # Structure -> CrystalTokens
    trainer = cf.CrystalRLOOTrainer(model, [reward], args=cf.CrystalRLConfig(output_dir="runs/rl"), ...)

Importing the package registers ``model_type="crystalformer"`` with ``transformers.AutoConfig`` and
``transformers.AutoModel``, so ``AutoModel.from_pretrained(folder)`` loads a saved model. That needs the model's
classes (torch and transformers); everything else (TRL, the trainers, pymatgen, the rewards) loads when first used.
"""

from importlib.metadata import PackageNotFoundError, version

from . import modeling_crystalformer  # noqa: F401  (registers the model with AutoConfig / AutoModel)
from .utils import lazy_exports


try:
    __version__ = version("crystalformer-rl")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "CrystalFormerConfig": ".modeling_crystalformer",
    "CrystalFormerForCrystalGeneration": ".modeling_crystalformer",
    "SamplingOptions": ".modeling_crystalformer",
    "load_model": ".pretrained",
    "CrystalTokenizer": ".tokenization",
    "CrystalTokens": ".tokenization",
    "CrystalReward": ".reward_models",
    "CrystalDPOConfig": ".trainers",
    "CrystalDPOTrainer": ".trainers",
    "CrystalPretrainConfig": ".trainers",
    "CrystalPretrainer": ".trainers",
    "CrystalRLConfig": ".trainers",
    "CrystalRLOOTrainer": ".trainers",
}

__all__ = ["__version__", *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
