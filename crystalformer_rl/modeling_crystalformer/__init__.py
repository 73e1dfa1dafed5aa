"""CrystalFormer as a Hugging Face model: configuration, model, sampler, MCMC and checkpoint converter.

Importing this package registers ``model_type="crystalformer"`` with `AutoConfig` and `AutoModel`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_crystalformer import CrystalFormerConfig
from .mcmc_crystalformer import CrystalMCMCOutput
from .modeling_crystalformer import (
    CrystalFormerForCrystalGeneration,
    CrystalFormerKVCache,
    CrystalFormerModel,
    CrystalFormerOutput,
    CrystalFormerPreTrainedModel,
)
from .sampling_crystalformer import CrystalSamplerOutput, SamplingOptions


AutoConfig.register(CrystalFormerConfig.model_type, CrystalFormerConfig, exist_ok=True)
AutoModel.register(CrystalFormerConfig, CrystalFormerForCrystalGeneration, exist_ok=True)

__all__ = [
    "CrystalFormerConfig",
    "CrystalFormerForCrystalGeneration",
    "CrystalFormerKVCache",
    "CrystalFormerModel",
    "CrystalFormerOutput",
    "CrystalFormerPreTrainedModel",
    "CrystalMCMCOutput",
    "CrystalSamplerOutput",
    "SamplingOptions",
]
