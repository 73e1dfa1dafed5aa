"""Trainers: reinforcement fine-tuning (TRL RLOO with an EMA baseline), preference optimisation (DPO) and
maximum-likelihood pretraining. Their command line is :mod:`crystalformer_rl.commands.train`."""

from .crystal_dpo_config import CrystalDPOConfig
from .crystal_dpo_trainer import CrystalDPOTrainer
from .crystal_rloo_config import CrystalRLConfig
from .crystal_rloo_trainer import CrystalRLOOTrainer, space_group_prompts
from .pretrain_config import CrystalPretrainConfig
from .pretrain_trainer import CrystalPretrainer, PaddingCollator, plot_loss_curves
from .utils import MODEL_SIZES, fill_prompts, training_space_groups, write_model_reference


__all__ = [
    "MODEL_SIZES",
    "CrystalDPOConfig",
    "CrystalDPOTrainer",
    "CrystalPretrainConfig",
    "CrystalPretrainer",
    "CrystalRLConfig",
    "CrystalRLOOTrainer",
    "PaddingCollator",
    "fill_prompts",
    "plot_loss_curves",
    "space_group_prompts",
    "training_space_groups",
    "write_model_reference",
]
