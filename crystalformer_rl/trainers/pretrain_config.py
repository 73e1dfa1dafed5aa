"""Configuration of CrystalFormer pretraining; its help strings are the ``crystalformer-rl pretrain`` CLI docs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .precision import BF16_HELP, PIN_MEMORY_HELP, TF32_HELP, pin_memory_only_on_cuda


@dataclass
class CrystalPretrainConfig(TrainingArguments):
    """Maximum-likelihood pretraining of CrystalFormer on tokenized crystals (reference doc §3).

    Loss = −mean log p(XYZ) − λ_a·mean log p(A) − λ_w·mean log p(W) − λ_l·mean log p(L); Adam (no weight decay),
    global gradient-norm clip 1, dropout as configured in the model. Batches are padded only to their longest
    crystal (plus the lattice read-out site).
    """

    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate (reference default 1e-4)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Plain Adam, as the reference (no weight decay)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam β2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Global gradient-norm clip (reference: 1)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    per_device_train_batch_size: int = field(default=100, metadata={"help": "Crystals per batch (reference: 100)."})
    per_device_eval_batch_size: int = field(default=200, metadata={"help": "Crystals per validation batch."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to compute the validation NLL."})
    eval_steps: float = field(default=500, metadata={"help": "Validate every N optimizer steps."})
    save_steps: float = field(default=500, metadata={"help": "Checkpoint (safetensors) every N optimizer steps."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep this many checkpoints."})
    logging_steps: float = field(default=50, metadata={"help": "Log the training NLL terms every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "The collator picks the token columns."})
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Drop the incomplete last batch."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "'group_by_length' (default): batches of crystals with similar site counts (column "
            "`length_column_name`), the order reshuffled every epoch, ~2.5x shorter padded batches than random "
            "ones on MP-20; 'random' as the reference; or 'sequential', 'batch_rebalance'.",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    length_column_name: str = field(default="num_sites", metadata={"help": "Column with each crystal's sites."})
    compile_model: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the model's validated forward (dynamic shapes): fuses dropout and the element-wise "
            "work; costs a few minutes of compilation up front, so worth it for long runs."
        },
    )
    random_representatives: bool = field(
        default=False,
        metadata={
            "help": "Augment: show each training crystal written another valid way, drawn anew every time (a random "
            "coset of the space group's normalizer that keeps the cell's metric: an origin shift, inversion or an "
            "allowed axis swap, which may relabel Wyckoff positions; then a random equivalent representative per "
            "site). Same crystals, more descriptions; not in the reference. Validation always uses the tokenizer's "
            "own description. The draws are not checkpointed, so a resumed run sees other descriptions. Measured on "
            "the default model: worse stability (docs/results/default_model.md)."
        },
    )
    pad_to_n_max: bool = field(
        default=False,
        metadata={"help": "Pad every batch to n_max sites as the reference does (slower; for benchmarks)."},
    )

    # ---- precision and host memory (documented defaults; see `scripts/device_check.py` for GPU figures)
    bf16: bool = field(default=False, metadata={"help": BF16_HELP})
    tf32: bool | None = field(default=None, metadata={"help": TF32_HELP})
    dataloader_pin_memory: bool = field(default=True, metadata={"help": PIN_MEMORY_HELP})

    def __post_init__(self):
        super().__post_init__()
        pin_memory_only_on_cuda(self)
