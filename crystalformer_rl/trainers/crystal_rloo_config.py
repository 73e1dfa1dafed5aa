"""Configuration of the CrystalFormer-RL trainer; its help strings are the ``crystalformer-rl rl`` CLI docs."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trl import RLOOConfig

from .precision import PIN_MEMORY_HELP, TF32_HELP, pin_memory_only_on_cuda


logger = logging.getLogger(__name__)


if TYPE_CHECKING:  # the model is imported when sampling options are built, not to parse a config
    from ..modeling_crystalformer import SamplingOptions


def parse_clip_range(value) -> tuple[float, float] | None:
    """``reward_clip_range`` from YAML (a list), Python (a tuple) or the command line (``-1,0``, ``[-1, 0]``,
    ``none``). HfArgumentParser turns a command-line string into a tuple of its characters; they are joined back."""
    characters = isinstance(value, (tuple, list)) and all(isinstance(v, str) and len(v) == 1 for v in value)
    if characters and len(value) != 2:  # ("-", "1", ",", "0"); a pair such as ("0", "1") is two numbers
        value = "".join(value)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    try:
        parts = value.strip().strip("[]()").split(",") if isinstance(value, str) else list(value)
        low, high = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise ValueError(
            f"--reward_clip_range {value!r}: give two numbers MIN,MAX (e.g. --reward_clip_range=-1,0) or none"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"--reward_clip_range {value!r}: need finite MIN <= MAX")
    return (low, high)


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
    sees the whole local batch. As the reference code, rewards are clipped to [−10, 10] and a crystal no reward
    function can score gets −10 (``reward_clip_range``, ``failure_reward``).
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
        default=False,
        metadata={
            "help": "bf16 autocast of sampling, the log-likelihoods and the loss (parameters and optimizer states "
            "stay float32). Default False, float32 throughout (the paper's; TRL's default would be True): the PPO "
            "ratio exp(Σ log p) over ~100 terms is sensitive to bf16, so watch the logged `ratio` and "
            "`clip_fraction` when turning it on."
        },
    )
    tf32: bool | None = field(default=None, metadata={"help": TF32_HELP})
    dataloader_pin_memory: bool = field(default=True, metadata={"help": PIN_MEMORY_HELP})
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})
    save_steps: float = field(
        default=30,
        metadata={
            "help": "Checkpoint every N optimizer steps, rounded to a multiple of num_iterations (μ) with a note: a "
            "checkpoint between two sampled batches could not be resumed exactly."
        },
    )
    reward_clip_range: tuple[float, float] | None = field(
        default=(-10.0, 10.0),
        metadata={
            "help": "Clip the reward to (min, max) before the KL term and the baseline. Default: the reference code's "
            "E_hull rule, E_hull clipped to [-10, 10] eV/atom (reward = -E_hull). Widen it or set None for rewards on "
            "another scale (the dielectric figure of merit): [-20, 20] in the YAML config, --reward_clip_range=-20,20 "
            "or --reward_clip_range none on the command line."
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
    # (temperature and top_p are TRL's own fields; `sampling_options()` hands them to the sampler)
    space_groups: list[int] | None = field(
        default=None,
        metadata={"help": "Space groups to sample (uniformly); default: the training distribution of the prompts."},
    )
    elements: list[str] | None = field(
        default=None,
        metadata={
            "help": "Not supported in RL (refused): the PPO ratio and the KL use the model's likelihood over all "
            "elements, so the policy could lower its KL by moving probability onto elements it never samples."
        },
    )
    failure_reward: float | None = field(
        default=-10.0,
        metadata={
            "help": "Reward of a crystal that no reward function can score (all return None/NaN: undecodable, "
            "overlapping atoms, an MLIP failure). Default: the reference code's rule, a failure scores as the worst "
            "clipped E_hull (10 eV/atom, reward -10), so it enters the baseline and is pushed away from, the same "
            "with and without kl_in_loss. None: TRL's rule, the crystal leaves the baseline and gets advantage 0 "
            "(and no KL term), i.e. nothing pushes the policy away from it."
        },
    )
    stable_reward: str | None = field(
        default="ehull",
        metadata={
            "help": "Name of the reward function whose reward is -E_hull (eV/atom), as EhullReward's: its E_hull is "
            "compared with stable_threshold for the logged `rewards/<name>/stable_fraction`. Ignored when no reward "
            "function has this name."
        },
    )
    stable_threshold: float = field(
        default=0.1,
        metadata={
            "help": "E_hull (eV/atom) at or below which a crystal counts as stable in the logged stable fraction "
            "(a fraction of all sampled crystals; unscorable ones are not stable), as `crystalformer-rl evaluate`."
        },
    )
    log_crystal_metrics: bool = field(
        default=True,
        metadata={
            "help": "Log per step, over the sampled batch: structure and composition validity (CDVAE/SMACT, as "
            "`crystalformer-rl evaluate`), uniqueness within the batch (StructureMatcher within a reduced formula) "
            "and the share of single-element crystals, so a collapse onto a few motifs shows while it happens. "
            "Costs a few CPU seconds per 1000 crystals."
        },
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep prompt columns for rewards."})

    def __post_init__(self):
        if self.baseline not in ("ema", "rloo"):
            raise ValueError(f"baseline must be 'ema' or 'rloo', not {self.baseline!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), not {self.ema_decay}")
        self.reward_clip_range = parse_clip_range(self.reward_clip_range)
        if self.normalize_advantages:
            raise ValueError(
                "normalize_advantages=True is not supported: the advantages are the paper's (reward - baseline), "
                "computed by CrystalRLOOTrainer, which TRL's normalisation never sees"
            )
        if self.elements:
            raise ValueError(
                f"elements={self.elements}: element-restricted RL is not supported (the PPO ratio and the KL would "
                "use the unrestricted likelihood); fine-tune without it and restrict elements when sampling"
            )
        super().__post_init__()
        self.sampling_options()  # a bad temperature / top_p / element is reported now, not at the first batch
        pin_memory_only_on_cuda(self)
        self._check_save_steps()

    def sampling_options(self) -> SamplingOptions:
        """How the policy samples its crystals: ``policy.sample(groups, sampling_options=args.sampling_options())``."""
        from ..modeling_crystalformer import SamplingOptions

        return SamplingOptions(temperature=self.temperature, top_p=self.top_p, elements=self.elements)

    def _check_save_steps(self):
        """TRL does not checkpoint its position inside a sampled batch: a resume from a checkpoint in the middle of
        the μ updates would re-sample there and silently diverge from the uninterrupted run."""
        if self.save_strategy != "steps":
            return
        save_steps = self.save_steps
        if save_steps < 1:  # a fraction of max_steps
            if self.max_steps <= 0:
                return
            save_steps = math.ceil(self.max_steps * save_steps)
        micro_steps = self.steps_per_generation * self.num_iterations  # micro-steps per sampled batch
        cycle = micro_steps // math.gcd(micro_steps, self.gradient_accumulation_steps)  # in optimizer steps
        if self.steps_per_generation == self.gradient_accumulation_steps:
            need = f"num_iterations={self.num_iterations}"
        else:
            need = (
                f"{cycle} (num_iterations={self.num_iterations} x steps_per_generation={self.steps_per_generation}"
                f" / gradient_accumulation_steps={self.gradient_accumulation_steps})"
            )
        if int(save_steps) % cycle:  # aligned here: a checkpoint between two sampled batches could not resume exactly
            aligned = max(cycle, cycle * round(int(save_steps) / cycle))
            logger.warning(
                "save_steps=%g is not a multiple of %s; checkpoints every %d steps instead, on a sampled-batch "
                "boundary, so that each one resumes exactly",
                save_steps,
                need,
                aligned,
            )
            self.save_steps = aligned
        # Trainer also saves at max_steps: a run continued from there (--resume_from_checkpoint last) must resume
        # on a sampled-batch boundary too
        if self.max_steps > 0 and self.max_steps % cycle:
            raise ValueError(
                f"max_steps={self.max_steps} is not a multiple of {need}: the final checkpoint would fall between "
                "two sampled batches and could not be resumed exactly; choose a multiple (or --save_strategy no)."
            )
