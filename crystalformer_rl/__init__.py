"""CrystalFormer-RL: the CrystalFormer crystal generative model on the Hugging Face stack, and its RL fine-tuning.

The names most used are here, imported on first use::

    import crystalformer_rl as cf

    model = cf.load_model()                           # the embedded default model
    tokens = cf.CrystalTokenizer().encode(structure)  # Structure -> CrystalTokens
    trainer = cf.CrystalRLOOTrainer(model, [reward], args=cf.CrystalRLConfig(output_dir="runs/rl"), ...)

Importing the package registers ``model_type="crystalformer"`` with ``transformers.AutoConfig``, so
``AutoConfig.from_pretrained(folder)`` and ``AutoModel.from_pretrained(folder)`` load a saved model. The model's
classes are imported on that first use, not by the import itself (they cost a second or two of torch and
transformers modelling code that ``crystalformer-rl rl --help`` does not need); everything else (TRL, the trainers,
pymatgen, the rewards) also loads when first used.
"""

import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version

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


class _CrystalFormerConfigOnFirstUse:
    """``AutoConfig``'s entry for ``model_type="crystalformer"`` until first used: then it imports
    :mod:`crystalformer_rl.modeling_crystalformer`, whose import registers the real `CrystalFormerConfig` (in this
    entry's place) and `CrystalFormerForCrystalGeneration` with ``AutoModel``, and it acts as that config class."""

    __name__ = __qualname__ = "CrystalFormerConfig"
    model_type = "crystalformer"

    @staticmethod
    def _config_class():
        from .modeling_crystalformer import CrystalFormerConfig

        return CrystalFormerConfig

    def __getattr__(self, name: str):
        return getattr(self._config_class(), name)

    def __call__(self, *args, **kwargs):
        return self._config_class()(*args, **kwargs)


class _RegisterWhenAutoConfigLoads:
    """An import hook (a `sys.meta_path` finder) that adds the entry above to ``AutoConfig``'s registry as soon as
    transformers' `configuration_auto` module is loaded, so that ``import crystalformer_rl`` itself imports neither
    torch nor transformers. It finds nothing itself; it wraps the loading of that one module, then removes itself."""

    MODULE = "transformers.models.auto.configuration_auto"

    def find_spec(self, name, path=None, target=None):
        if name != self.MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _register(module.CONFIG_MAPPING)

        spec.loader.exec_module = exec_module
        return spec


def _register(config_mapping) -> None:
    if "crystalformer" not in config_mapping:  # the model package may already have registered the real class
        config_mapping.register("crystalformer", _CrystalFormerConfigOnFirstUse())


if _RegisterWhenAutoConfigLoads.MODULE in sys.modules:
    _register(sys.modules[_RegisterWhenAutoConfigLoads.MODULE].CONFIG_MAPPING)
else:
    sys.meta_path.insert(0, _RegisterWhenAutoConfigLoads())
