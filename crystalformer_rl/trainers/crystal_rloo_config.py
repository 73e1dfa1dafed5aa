"""Configuration of the CrystalFormer-RL trainer; its help strings are the ``crystalformer-rl rl`` CLI docs."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import RLOOConfig


@dataclass
class CrystalRLConfig(RLOOConfig):
    r"""
    Reinforcement fine-tuning of CrystalFormer (Cao & Wang, CrystalFormer-RL, Appendix C).

    Maximises E_x[r(x) − τ·ln(pθ(x)/p_base(x))] with PPO ratio clipping and an exponential-moving-average
    baseline. ``beta`` is τ. Defaults are the paper's: τ = 0.1 (use 2 for the dielectric figure of merit),
    ε = 0.2, μ = ``num_iterations`` = 3 updates per sampled batch, Adam at 1e-4, gradient clip 1, no dropout,
    float32, a constant learning rate.

    Each generation batch is sampled by the policy itself (one space group per crystal, drawn from the prompt
    dataset), scored by the reward functions, and optimised for ``num_iterations`` steps. With
    ``gradient_accumulation_steps = 1`` and ``steps_per_generation = 1`` (the defaults here), one optimizer step
    sees the whole local batch.
    """

    # ---- paper defaults that differ from TRL's
    beta: float = field(
        default=0.1,
        metadata={"help": "τ, the KL coefficient: 0.1 for the E_hull reward, 2 for the dielectric figure of merit."},
    )
    num_iterations: int = field(default=3, metadata={"help": "μ: PPO updates per sampled batch (paper: 3)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Adam learning rate (paper: 1e-4)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (paper: constant)."})
    per_device_train_batch_size: int = field(
        default=100, metadata={"help": "Crystals sampled per process and per generation (paper: 1000 in total)."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Not needed for a 5M-parameter model."})
    disable_dropout: bool = field(default=True, metadata={"help": "No dropout while fine-tuning (paper)."})
    bf16: bool | None = field(
        default=False, metadata={"help": "Keep float32: the PPO ratio exp(Σ log p) is sensitive to bf16."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})
    save_steps: float = field(
        default=30,
        metadata={
            "help": "Checkpoint every N optimizer steps; keep it a multiple of num_iterations for exact resume."
        },
    )

    # ---- CrystalFormer-RL specifics
    baseline: str = field(
        default="ema",
        metadata={
            "help": "Advantage baseline: 'ema' (paper: b ← η·b + (1−η)·mean R, b₀ = first batch mean, gathered "
            "over processes) or 'rloo' (TRL's leave-one-out within groups of num_generations).",
            "choices": ["ema", "rloo"],
        },
    )
    ema_decay: float = field(default=0.95, metadata={"help": "η of the EMA baseline (paper: 0.95)."})
    kl_in_loss: bool = field(
        default=False,
        metadata={
            "help": "The reference code's variant: subtract τ·(log pθ − log p_base) from the advantage inside the "
            "loss, with gradient, and take the EMA over the raw reward. Default (False) is the paper's formula: "
            "the KL enters the reward per sample, without gradient."
        },
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold for the categorical draws."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    space_groups: list[int] | None = field(
        default=None,
        metadata={"help": "Space groups to sample (uniformly); default: the training distribution of the prompts."},
    )
    elements: list[str] | None = field(
        default=None, metadata={"help": "Restrict every site to these elements (e.g. ['Li', 'Fe', 'P', 'O'])."}
    )
    stable_threshold: float = field(
        default=0.1, metadata={"help": "E_hull threshold (eV/atom) used for the logged stable fraction."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep prompt columns for rewards."})

    def __post_init__(self):
        if self.baseline not in ("ema", "rloo"):
            raise ValueError(f"baseline must be 'ema' or 'rloo', not {self.baseline!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), not {self.ema_decay}")
        super().__post_init__()
