"""CrystalFormer-RL on TRL: ``RLOOTrainer`` with crystals instead of text and an EMA baseline.

The paper's objective E[r(x) − τ·ln(pθ(x)/p_base(x))] maps onto TRL 1.16's RLOO machinery (see
``../shared/docs/trl-rloo-subclassing.md``): TRL keeps the dataloader, the μ-times reuse of each generation
batch, the reward-function protocol (``_calculate_rewards``, gathered across processes), the optimizer,
checkpointing and logging. We replace the two methods that touch text:

* ``_generate_and_score_completions``: sample crystals with CrystalFormer's own sampler (one space group per
  prompt row), score them (failures scored as ``failure_reward``, rewards clipped), fold the KL into the reward
  (or keep it for the loss), subtract the EMA baseline, and log per-step crystal metrics and whatever the reward
  functions reported through ``log_metric`` / ``log_extra``;
* ``_compute_loss``: sequence-level PPO ratio of the crystal log-likelihood, clipped at ε.

The EMA baseline is checkpointed next to the model and restored in ``_load_optimizer_and_scheduler``, which
``Trainer`` calls on every backend (DeepSpeed and FSDP skip ``_load_from_checkpoint``).

The frozen base model p_base is built from the policy *before* TRL's constructor runs (TRL would reload it by
name, and a copy taken afterwards shares the patched forward, which silently gives KL ≡ 0).
"""

from __future__ import annotations

import copy
import gzip
import json
import logging as pylogging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate.utils import gather, gather_object
from datasets import Dataset
from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.utils import logging
from trl import RLOOTrainer

from ..materials.matching import deduplicate
from ..materials.validity import check_composition_validity, check_structure_validity
from ..modeling_crystalformer import CrystalFormerForCrystalGeneration
from ..tokenization import TOKEN_FIELDS, CrystalTokenizer, CrystalTokens, WyckoffTables
from ..utils import atomic_write_bytes, atomic_write_text
from .crystal_rloo_config import CrystalRLConfig


logger = logging.get_logger(__name__)
EMA_STATE_NAME = "ema_baseline.json"
# The state of stateful reward functions (e.g. the S.U.N.-aware reward's archive of produced crystals), one file per
# process since each rank keeps its own: reward_state.json.gz on rank 0, reward_state-rank<i>.json.gz on rank i.
REWARD_STATE_NAME = "reward_state{suffix}.json.gz"
TRL_UNSCORABLE_WARNING = "at least one reward function returns a valid reward"


class _DropTRLUnscorableWarning(pylogging.Filter):
    """Drops TRL's per-batch warning that prints a whole unscorable crystal; we log one counted line instead."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return TRL_UNSCORABLE_WARNING not in record.getMessage()


class CrystalProcessingClass(PreTrainedTokenizerBase):
    """The minimal text-tokenizer face TRL asks of ``processing_class``, wrapping a :class:`CrystalTokenizer`.

    TRL only needs pad/eos tokens and ``save_pretrained``; saving writes the crystal tokenizer's config so every
    checkpoint carries it.
    """

    def __init__(self, crystal_tokenizer: CrystalTokenizer | None = None, **kwargs):
        self.crystal_tokenizer = crystal_tokenizer or CrystalTokenizer()
        self._vocab = {"<pad>": 0, "<eos>": 1}
        super().__init__(pad_token="<pad>", eos_token="<eos>", padding_side="left", **kwargs)

    def _convert_token_to_id_with_added_voc(self, token):
        return self._vocab.get(token, 0)

    def _convert_token_to_id(self, token):
        return self._vocab.get(token, 0)

    def __len__(self):
        return len(self._vocab)

    def get_vocab(self):
        return dict(self._vocab)

    def batch_decode(self, sequences, **kwargs):
        return [str(s) for s in sequences]

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.crystal_tokenizer.save_pretrained(save_directory)
        return (os.path.join(save_directory, "tokenizer_config.json"),)


def space_group_prompts(space_groups: Sequence[int], extra_columns: dict[str, Sequence] | None = None) -> Dataset:
    """Prompt dataset: one row per space group. TRL draws rows uniformly, so pass the training set's column of
    space groups (with repeats) to sample the training distribution, or a list of groups to sample uniformly."""
    groups = [int(g) for g in space_groups]
    bad = [g for g in groups if not 1 <= g <= 230]
    if bad:
        raise ValueError(f"space groups must be in 1..230, got {bad[:5]}")
    return Dataset.from_dict({"prompt": groups, **(extra_columns or {})})


def prepare_policy(model, args):
    """The policy as the fine-tuning trainers (RL, DPO) take it: loaded if given as a path, dropout off when
    ``args.disable_dropout``, and DDP told to skip the constant symmetry buffers (some boolean, which gloo cannot
    broadcast)."""
    if isinstance(model, (str, os.PathLike)):
        model = CrystalFormerForCrystalGeneration.from_pretrained(model)
    if args.disable_dropout:
        disable_all_dropout(model)
    model._ddp_params_and_buffers_to_ignore = [name for name, _ in model.named_buffers()]
    return model


def disable_all_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout, including functional attention dropout (TRL's ``disable_dropout`` only reaches
    ``nn.Dropout``): sampling, old log-probs and the loss must all see the same deterministic model."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    for name in ("attention_dropout", "hidden_dropout", "dropout_rate", "attn_dropout"):
        if hasattr(model.config, name):
            setattr(model.config, name, 0.0)


class CrystalRLOOTrainer(RLOOTrainer):
    """Reinforcement fine-tuning of a CrystalFormer model with reward callables (``crystalformer_rl.reward_models``).

    Args:
        model: the policy (a model or a path / Hub id to ``from_pretrained``).
        reward_funcs: TRL reward callables ``f(prompts, completions, completion_ids, **kw) -> list[float | None]``;
            completions are :class:`CrystalTokens` (``.to_structure()`` gives the pymatgen structure).
        args: :class:`CrystalRLConfig`.
        train_dataset: prompts (``space_group_prompts``); defaults to ``args.space_groups`` or all 230 groups.
        ref_model: p_base; defaults to a frozen copy of the policy as passed in.
        rollout_fn: optional ``f(model, prompt_rows: list[dict]) -> dict of G, W, A, XYZ, L`` replacing the
            sampler (e.g. to feed fixed crystals, as the multi-process test does).
    """

    _tag_names = ["trl", "rloo", "crystalformer-rl"]

    def __init__(
        self,
        model: CrystalFormerForCrystalGeneration | str,
        reward_funcs: Callable | list[Callable],
        args: CrystalRLConfig | None = None,
        train_dataset: Dataset | None = None,
        ref_model: CrystalFormerForCrystalGeneration | None = None,
        crystal_tokenizer: CrystalTokenizer | None = None,
        callbacks=None,
        optimizers=(None, None),
        rollout_fn: Callable | None = None,
    ):
        args = args or CrystalRLConfig(output_dir="crystalformer-rl")
        model = prepare_policy(model, args)
        if getattr(model, "generation_config", None) is None:
            model.generation_config = GenerationConfig()
        # p_base: copied before TRL patches the policy's forward (a later copy would share it: KL ≡ 0).
        ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
        ref_model.requires_grad_(False).eval()
        if train_dataset is None:
            train_dataset = space_group_prompts(args.space_groups or range(1, 231))
        self.crystal_tokenizer = crystal_tokenizer or CrystalTokenizer(n_max=model.config.n_max)
        self.rollout_fn = rollout_fn

        tau = args.beta
        args.beta = 0.0  # stop TRL from loading a reference model by name; ours is attached below
        try:
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                processing_class=CrystalProcessingClass(self.crystal_tokenizer),
                callbacks=callbacks,
                optimizers=optimizers,
            )
        finally:
            args.beta = tau
        self.beta = tau
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
        else:
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self.ema_baseline: float | None = None
        self._multiplicity = torch.tensor(WyckoffTables.load().mult)

    # ------------------------------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def _sample(self, space_groups: torch.Tensor, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        policy = self.accelerator.unwrap_model(self.model)
        # The sampler calls the model's modules directly, not the `forward` accelerate wraps in autocast: give it
        # the same mixed precision as the likelihoods and the loss (bf16 autocast with `bf16=True`, else a no-op).
        with self.accelerator.autocast():
            if self.rollout_fn is not None:
                tokens = self.rollout_fn(policy, inputs)
            else:
                # Draw from the global RNG (checkpointed by the Trainer, so resumes replay it) and decorrelate
                # ranks, which the Trainer seeds identically.
                seed = (int(torch.randint(0, 2**62, (1,))) + 1_000_003 * self.accelerator.process_index) % 2**62
                out = policy.sample(space_group=space_groups, seed=seed, sampling_options=self.args.sampling_options())
                tokens = {k: getattr(out, k) for k in TOKEN_FIELDS}
        device = self.accelerator.device
        tokens = {k: torch.as_tensor(tokens[k]).to(device) for k in TOKEN_FIELDS}
        # Trim the padding shared by every crystal (keep one site for the lattice read-out).
        length = min(int((tokens["W"] > 0).sum(1).max()) + 1, tokens["W"].shape[1])
        for k in ("W", "A", "XYZ"):
            tokens[k] = tokens[k][:, :length]
        tokens["XYZ"] = tokens["XYZ"].float()
        tokens["L"] = tokens["L"].float()
        return tokens

    @torch.no_grad()
    def _sequence_logp(self, model, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**{k: tokens[k] for k in TOKEN_FIELDS}, output_logits=False).logp.float()

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        device = self.accelerator.device
        prompts = [int(x["prompt"]) for x in inputs]

        start = time.perf_counter()
        tokens = self._sample(torch.tensor(prompts, device=device), inputs)
        sampling_s = time.perf_counter() - start

        old_logps = self._sequence_logp(self.model, tokens)
        ref_logps = self._sequence_logp(self.ref_model, tokens)

        # Each completion decodes its structure once (cached): the rewards and the crystal metrics share it.
        completions = CrystalTokens.from_batch(*(tokens[k] for k in TOKEN_FIELDS))
        start = time.perf_counter()
        rewards_per_func = self._calculate_rewards(inputs, prompts, completions, [None] * len(prompts))
        scoring_s = time.perf_counter() - start

        rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        scorable = ~torch.isnan(rewards_per_func).all(dim=1)
        rewards = torch.where(scorable, rewards, torch.full_like(rewards, float("nan")))
        counted = scorable  # the crystals that enter the baseline and get an advantage
        if self.args.failure_reward is not None:
            rewards = torch.where(scorable, rewards, torch.full_like(rewards, float(self.args.failure_reward)))
            counted = torch.ones_like(scorable)
        if self.args.reward_clip_range is not None:
            low, high = self.args.reward_clip_range
            rewards = rewards.clamp(min=float(low), max=float(high))

        kl = gather(old_logps - ref_logps)  # ln pθ(x) − ln p_base(x), one per crystal
        shaped = rewards if self.args.kl_in_loss else rewards - self.beta * kl
        advantages, baseline = self._advantages(shaped, rewards, counted, mode)

        process_slice = slice(
            self.accelerator.process_index * len(prompts), (self.accelerator.process_index + 1) * len(prompts)
        )
        self._log_rollout(
            mode, rewards, shaped, rewards_per_func, kl, baseline, scorable, tokens, sampling_s, scoring_s
        )
        if self.args.log_crystal_metrics:
            self._log_crystal_metrics(mode, completions)
        self._flush_reward_logs(mode, len(prompts))
        return {
            **tokens,
            "old_logps": old_logps,
            "ref_logps": ref_logps,
            "advantages": advantages[process_slice],
            "counted": counted[process_slice].float(),
        }

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's, minus its warning that prints a whole crystal on every batch: one counted line instead."""
        trl_logger = pylogging.getLogger(RLOOTrainer.__module__)
        drop = _DropTRLUnscorableWarning()
        trl_logger.addFilter(drop)
        try:
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            trl_logger.removeFilter(drop)
        n_unscorable = int(torch.isnan(rewards_per_func).all(dim=1).sum())
        if n_unscorable and self.accelerator.is_main_process:
            fate = (
                "left out of the baseline (advantage 0)"
                if self.args.failure_reward is None
                else f"scored failure_reward={self.args.failure_reward:g}"
            )
            logger.warning(
                f"{n_unscorable} of {len(rewards_per_func)} crystals unscorable (no reward function scored them): "
                f"{fate}"
            )
        return rewards_per_func

    def _flush_reward_logs(self, mode: str, n_local: int) -> None:
        """Move what reward functions reported through ``log_extra`` / ``log_metric`` into the logs, as TRL's own
        ``_generate_and_score_completions`` does (else it is never logged and the buffers grow every batch)."""
        # Sorted keys: every rank must run the same collectives in the same order.
        for column in sorted(set(gather_object(list(self._pending_extra_logs)))):
            values = self._pending_extra_logs.get(column, [None] * n_local)
            self._logs["extra"][column].extend(gather_object(values))
        self._pending_extra_logs.clear()
        device = self.accelerator.device
        for name in sorted(set(gather_object(list(self._pending_metrics)))):
            values = self._pending_metrics.get(name, [])
            local = torch.tensor([sum(values), len(values)], dtype=torch.float32, device=device)
            total, count = self.accelerator.gather(local).view(-1, 2).sum(dim=0).tolist()
            self._metrics[mode][name].append(total / count if count else float("nan"))
        self._pending_metrics.clear()

    def _advantages(self, shaped, rewards, counted, mode):
        """A = R − b over the counted crystals (all, unless ``failure_reward`` is None); the others get A = 0."""
        if self.args.baseline == "rloo":
            grouped = torch.where(counted, shaped, torch.zeros_like(shaped)).view(-1, self.num_generations)
            counts = counted.view(-1, self.num_generations).sum(1, keepdim=True)
            loo = (grouped.sum(1, keepdim=True) - grouped) / (counts - 1).clamp(min=1)
            # The only counted crystal of its group has no leave-one-out baseline: A = 0, as TRL's 0/0 → NaN → 0.
            has_baseline = (counts > 1).expand_as(grouped).reshape(-1)
            advantages = torch.where(has_baseline, (grouped - loo).view(-1), torch.zeros_like(shaped))
            used = has_baseline & counted
            baseline = loo.view(-1)[used].mean().item() if used.any() else float("nan")
        else:
            # The paper's EMA over the KL-shaped reward; the reference code's variant takes it over the raw reward.
            source = rewards if self.args.kl_in_loss else shaped
            batch_mean = source[counted].mean().item() if counted.any() else float("nan")
            baseline = self.ema_baseline
            if mode == "train" and math.isfinite(batch_mean):
                decay = self.args.ema_decay
                baseline = batch_mean if baseline is None else decay * baseline + (1 - decay) * batch_mean
                self.ema_baseline = baseline
            baseline = batch_mean if baseline is None else baseline
            advantages = shaped - baseline
        advantages = torch.where(counted, advantages, torch.zeros_like(advantages))
        return torch.nan_to_num(advantages, nan=0.0), baseline

    def _log_rollout(
        self, mode, rewards, shaped, rewards_per_func, kl, baseline, scorable, tokens, sampling_s, scoring_s
    ):
        """Global (gathered) statistics of one sampled batch. ``reward`` is the mean of the reward optimised (failures
        scored as ``failure_reward``, clipped); ``rewards/<name>/mean`` the mean over the crystals ``name`` scored."""
        metrics = self._metrics[mode]
        used = rewards[~torch.isnan(rewards)]
        metrics["reward"].append(used.mean().item() if len(used) else float("nan"))
        metrics["reward_std"].append(used.std().item() if len(used) > 1 else 0.0)
        metrics["kl"].append(kl.mean().item())
        metrics["baseline"].append(float(baseline))
        # what the baseline tracks: the reward less τ·KL (the paper's), or the reward itself (kl_in_loss)
        metrics["reward_shaped"].append(torch.nanmean(shaped).item() if len(used) else float("nan"))
        metrics["scorable_fraction"].append(scorable.float().mean().item())
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(rewards_per_func[:, i]).item())
            if name == self.args.stable_reward:
                # Reward = −E_hull; unscorable crystals (NaN) are not stable, as in `crystalformer-rl evaluate`.
                stable = -rewards_per_func[:, i] <= self.args.stable_threshold
                metrics[f"rewards/{name}/stable_fraction"].append(stable.float().mean().item())
        mult = self._multiplicity.to(tokens["W"].device)
        num_atoms = mult[tokens["G"].unsqueeze(1) - 1, tokens["W"]].sum(1).float()
        metrics["num_atoms"].append(gather(num_atoms).mean().item())
        metrics["time/sampling_s"].append(sampling_s)
        metrics["time/scoring_s"].append(scoring_s)

    def _log_crystal_metrics(self, mode: str, completions: list[CrystalTokens]) -> None:
        """Validity, uniqueness and single-element share of the global batch, with the definitions of
        ``crystalformer-rl evaluate`` (fractions of all sampled crystals): a stable fraction alone cannot tell
        progress from a collapse onto a few motifs."""
        start = time.perf_counter()
        structures, struct_ok, comp_ok, single = [], [], [], []
        for crystal in completions:
            elements = {int(a) for w, a in zip(crystal.W, crystal.A) if w > 0}
            single.append(len(elements) == 1)
            try:
                s = crystal.to_structure()  # cached: the structure the rewards were given, not decoded again
                struct_ok.append(check_structure_validity(s) is None)
                comp_ok.append(check_composition_validity(s) is None)
            except Exception:  # undecodable tokens: invalid, and not a structure to match
                s = None
                struct_ok.append(False)
                comp_ok.append(False)
            structures.append(s)
        rows = [(a, b, a and b, c) for a, b, c in zip(struct_ok, comp_ok, single)]
        flags = torch.tensor(rows, dtype=torch.float32, device=self.accelerator.device)
        fractions = self.accelerator.gather(flags).mean(0)
        metrics = self._metrics[mode]
        for key, value in zip(("struct_valid", "comp_valid", "valid", "single_element"), fractions.tolist()):
            metrics[f"{key}_fraction"].append(value)
        # Uniqueness over the global batch: every rank de-duplicates the same gathered list.
        everything = gather_object(structures)
        duplicate_of = deduplicate(everything, progress=False)
        unique = sum(d is not None and d == i for i, d in enumerate(duplicate_of))
        metrics["unique_fraction"].append(unique / max(len(everything), 1))
        metrics["time/crystal_metrics_s"].append(time.perf_counter() - start)

    # ------------------------------------------------------------------------------------------- the loss
    def _compute_loss(self, model, inputs):
        start = time.perf_counter()
        logps = model(**{k: inputs[k] for k in TOKEN_FIELDS}, output_logits=False).logp.float()
        advantages = inputs["advantages"]
        if self.args.kl_in_loss:  # reference code: KL with gradient inside the advantage (not on uncounted crystals)
            advantages = advantages - self.beta * (logps - inputs["ref_logps"]) * inputs["counted"]
        ratio = torch.exp(logps - inputs["old_logps"])
        low, high = 1 - self.epsilon_low, 1 + self.epsilon_high
        clipped = torch.clamp(ratio, low, high)
        loss = -torch.min(ratio * advantages, clipped * advantages).mean()

        mode = "train" if self.model.training else "eval"
        is_clipped = ((ratio < low) & (advantages < 0)) | ((ratio > high) & (advantages > 0))
        self._metrics[mode]["clip_fraction"].append(self.accelerator.gather(is_clipped.float()).mean().item())
        self._metrics[mode]["ratio"].append(self.accelerator.gather(ratio.detach()).mean().item())
        self._metrics[mode]["time/update_s"].append(time.perf_counter() - start)
        return loss

    # -------------------------------------------------------------------------------------------- logging
    def train(self, *args, **kwargs):
        self._cpu_start, self._cpu_before = time.process_time(), None
        return super().train(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Also log ``cpu_s``: this process's CPU seconds of training (all its threads; sampling, rewards and updates),
        summed over resumed runs, so that RL's cost can be set against samplers charged by CPU time (MCMC)."""
        if getattr(self, "_cpu_start", None) is not None:
            if self._cpu_before is None:  # a resumed run's history is loaded by the first log
                self._cpu_before = next((e["cpu_s"] for e in reversed(self.state.log_history) if "cpu_s" in e), 0.0)
            logs["cpu_s"] = self._cpu_before + time.process_time() - self._cpu_start
        super().log(logs, start_time)

    # ---------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        if self.args.should_save:
            state = {
                "ema_baseline": self.ema_baseline,
                "step": self.state.global_step,
                "base_model_fingerprint": self._base_fingerprint(),
            }
            atomic_write_text(json.dumps(state), os.path.join(folder, EMA_STATE_NAME))
        self._save_reward_state(folder)  # on every rank: each keeps its own state

    def _load_optimizer_and_scheduler(self, checkpoint):
        """Also restore the EMA baseline and the rewards' state: ``Trainer`` calls this on every backend when
        resuming, whereas DeepSpeed and FSDP never reach ``_load_from_checkpoint``."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_ema_state(checkpoint)
            self._load_reward_state(checkpoint)

    def _stateful_rewards(self) -> dict[str, Any]:
        """Reward functions whose answer depends on what they saw before: a JSON ``state_dict`` (a reward *model*'s
        ``torch.nn.Module.state_dict`` is its fixed weights, not state)."""
        return {
            name: func
            for name, func in zip(self.reward_func_names, self.reward_funcs)
            if callable(getattr(func, "load_state_dict", None)) and not isinstance(func, torch.nn.Module)
        }

    def _reward_state_path(self, folder: str) -> str:
        index = self.accelerator.process_index
        return os.path.join(folder, REWARD_STATE_NAME.format(suffix="" if index == 0 else f"-rank{index}"))

    def _save_reward_state(self, folder: str) -> None:
        """Without this a resumed S.U.N.-aware run would start with an empty archive: every crystal of the run
        before the checkpoint would look unique again."""
        rewards = self._stateful_rewards()
        if not rewards:
            return
        os.makedirs(folder, exist_ok=True)
        payload = gzip.compress(json.dumps({n: f.state_dict() for n, f in rewards.items()}).encode(), mtime=0)
        atomic_write_bytes(payload, self._reward_state_path(folder))

    def _load_reward_state(self, checkpoint: str) -> None:
        rewards = self._stateful_rewards()
        if not rewards:
            return
        path = self._reward_state_path(checkpoint)
        if not os.path.exists(path):
            logger.warning(
                "%s: no reward state; %s start empty (a checkpoint written before reward state was saved)",
                checkpoint,
                ", ".join(rewards),
            )
            return
        with gzip.open(path, "rt") as f:
            state = json.load(f)
        for name, func in rewards.items():
            if name in state:
                func.load_state_dict(state[name])

    def _load_ema_state(self, resume_from_checkpoint):
        path = os.path.join(resume_from_checkpoint, EMA_STATE_NAME)
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
            self.ema_baseline = state["ema_baseline"]
            saved = state.get("base_model_fingerprint")
            if saved is not None and not math.isclose(saved, self._base_fingerprint(), rel_tol=1e-9):
                logger.warning(
                    "p_base differs from the base model of the run being resumed: pass the same base model (not the "
                    "checkpoint) as `model`; the checkpoint's weights are loaded into the policy only."
                )

    def _base_fingerprint(self) -> float:
        ref = self.accelerator.unwrap_model(self.ref_model)
        return float(sum(p.double().sum().item() + p.double().square().sum().item() for p in ref.parameters()))

    def create_model_card(self, model_name: str | None = None, **kwargs):
        """A model card naming the base model, the rewards and τ (TRL's text-LM card does not apply)."""
        if not self.is_world_process_zero():
            return
        policy = self.accelerator.unwrap_model(self.model)
        base = getattr(policy.config, "_name_or_path", "") or "CrystalFormer"
        rewards = ", ".join(
            f"{n} (weight {w:g})" for n, w in zip(self.reward_func_names, self.reward_weights.tolist())
        )
        card = MODEL_CARD.format(
            name=model_name or os.path.basename(self.args.output_dir),
            base=base,
            rewards=rewards,
            tau=self.beta,
            epsilon=self.epsilon_low,
            mu=self.num_iterations,
            baseline=self.args.baseline,
            ema=self.args.ema_decay,
            lr=self.args.learning_rate,
            batch=self.args.per_device_train_batch_size * self.accelerator.num_processes,
            steps=self.state.global_step,
            kl="inside the loss with gradient (reference code)" if self.args.kl_in_loss else "in the reward (paper)",
        )
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "README.md"), "w") as f:
            f.write(card)


MODEL_CARD = """---
library_name: crystalformer-rl
tags: [crystalformer, crystal-generation, materials, reinforcement-learning, trl, rloo]
base_model: {base}
---

# {name}

CrystalFormer fine-tuned by reinforcement learning with
[crystalformer-rl](https://github.com/crystalformer-rl/crystalformer-rl) (CrystalFormer-RL, Cao & Wang,
arXiv 2504.02367): maximise E[r(x) − τ·ln(pθ(x)/p_base(x))] with PPO clipping and a moving-average baseline.

| setting | value |
|---|---|
| base model | `{base}` |
| reward | {rewards} |
| τ (KL coefficient) | {tau} |
| KL term | {kl} |
| PPO clip ε / updates per batch μ | {epsilon} / {mu} |
| baseline | {baseline} (η = {ema}) |
| learning rate / crystals per step | {lr} / {batch} |
| optimizer steps | {steps} |

```python
from crystalformer_rl.modeling_crystalformer import CrystalFormerForCrystalGeneration
model = CrystalFormerForCrystalGeneration.from_pretrained("<this repo>")
crystals = model.sample(space_group=225, num_samples=10)
```
"""
