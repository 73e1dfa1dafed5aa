"""Trainers: reinforcement fine-tuning (TRL RLOO with an EMA baseline) and maximum-likelihood pretraining."""

from .crystal_rloo_config import CrystalRLConfig
from .crystal_rloo_trainer import CrystalRLOOTrainer, space_group_prompts
from .pretrain_config import CrystalPretrainConfig
from .pretrain_trainer import CrystalPretrainer, PaddingCollator, plot_loss_curves


__all__ = [
    "CrystalPretrainConfig",
    "CrystalPretrainer",
    "CrystalRLConfig",
    "CrystalRLOOTrainer",
    "PaddingCollator",
    "plot_loss_curves",
    "space_group_prompts",
]
