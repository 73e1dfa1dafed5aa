"""Trainers: reinforcement fine-tuning (TRL RLOO with an EMA baseline), preference optimisation (DPO) and
maximum-likelihood pretraining. Their command line is :mod:`crystalformer_rl.commands.train`."""

from ..utils import lazy_exports


_EXPORTS = {
    "CrystalDPOConfig": ".crystal_dpo_config",
    "CrystalDPOTrainer": ".crystal_dpo_trainer",
    "CrystalRLConfig": ".crystal_rloo_config",
    "CrystalRLOOTrainer": ".crystal_rloo_trainer",
    "space_group_prompts": ".crystal_rloo_trainer",
    "CrystalPretrainConfig": ".pretrain_config",
    "CrystalPretrainer": ".pretrain_trainer",
    "PaddingCollator": ".pretrain_trainer",
    "plot_loss_curves": ".plots",
    "plot_rl_curves": ".plots",
    "MODEL_SIZES": ".utils",
    "fill_prompts": ".utils",
    "training_space_groups": ".utils",
    "write_model_reference": ".utils",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
