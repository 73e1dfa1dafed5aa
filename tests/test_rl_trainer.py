import json
import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import trl
from transformers import Trainer, TrainerCallback

from crystalformer_rl.reward_models import NoveltyReward, SUNReward
from crystalformer_rl.tokenization import CrystalTokens
from crystalformer_rl.trainers import CrystalRLConfig, CrystalRLOOTrainer, space_group_prompts
from crystalformer_rl.trainers.crystal_rloo_trainer import EMA_STATE_NAME, REWARD_STATE_NAME
from tests.helpers.rl_crystals import (
    KNOWN_FRACTIONS,
    ToyEhull,
    known_inputs,
    known_prompts,
    known_rollout,
    known_tokens,
    logging_anion_share,
)
from tests.helpers.rl_toy import SPACE_GROUPS, anion_fraction, tiny_model, train_fixed


def make_trainer(tmp_path, model, beta=0.01, steps=21, lr=3e-3, batch=24, **kwargs):
    args = CrystalRLConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=lr,
        beta=beta,
        use_cpu=True,
        logging_steps=1,
        seed=0,
        save_strategy=kwargs.pop("save_strategy", "no"),
        **kwargs,
    )
    return CrystalRLOOTrainer(model, anion_fraction, args=args, train_dataset=space_group_prompts(SPACE_GROUPS * 30))


def known_trainer(tmp_path, reward_funcs=None, batch=10, **kwargs):
    """A trainer whose rollouts are the hand-made crystals of ``tests.helpers.rl_crystals`` (known properties)."""
    args = CrystalRLConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        num_generations=2,
        use_cpu=True,
        logging_steps=1,
        seed=0,
        save_strategy=kwargs.pop("save_strategy", "no"),
        **kwargs,
    )
    trainer = CrystalRLOOTrainer(
        tiny_model(),
        reward_funcs if reward_funcs is not None else ToyEhull(),
        args=args,
        train_dataset=known_prompts(),
        rollout_fn=known_rollout,
    )
    trainer.model.train()
    return trainer


@torch.no_grad()
def evaluate(policy, base, n=256, seed=123):
    """Mean reward and KL(policy ‖ base) estimated on fresh samples of the policy."""
    out = policy.sample(space_group=torch.tensor(SPACE_GROUPS * (n // len(SPACE_GROUPS) + 1))[:n], seed=seed)
    crystals = [CrystalTokens(int(g), w, a, x, lat) for g, w, a, x, lat in zip(out.G, out.W, out.A, out.XYZ, out.L)]
    reward = np.nanmean(np.array(anion_fraction(None, crystals), dtype=float))
    batch = {k: getattr(out, k) for k in ("G", "W", "A", "XYZ", "L")}
    kl = (policy.log_prob(**batch).logp - base.log_prob(**batch).logp).mean().item()
    return reward, kl


def test_trl_internals_we_override_are_still_there():
    """Contract test: CrystalRLOOTrainer replaces these TRL 1.16.0 internals; fail loudly if they move."""
    assert trl.__version__ == "1.16.0"
    for name in ("_generate_and_score_completions", "_compute_loss", "_calculate_rewards", "_prepare_inputs"):
        assert callable(getattr(trl.RLOOTrainer, name)), name
    import inspect

    source = inspect.getsource(trl.RLOOTrainer._prepare_inputs)
    assert "_generate_and_score_completions" in source and "steps_per_generation" in source
    assert list(inspect.signature(trl.RLOOTrainer._calculate_rewards).parameters) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]


def test_rl_raises_a_verifiable_reward_with_bounded_kl(tmp_path):
    base = tiny_model()
    trainer = make_trainer(tmp_path, tiny_model(), beta=0.01, steps=21, lr=1e-2)
    before, _ = evaluate(base, base)
    trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    after, kl = evaluate(policy, base)
    assert after > before + 0.1, (before, after)
    assert 0 < kl < 20, kl
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logged) == 7  # one generation every μ = 3 optimizer steps
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as p_base
    assert all(np.isfinite(h["kl"]) and 0 <= h["valid_fraction"] <= h["struct_valid_fraction"] for h in logged)


def test_a_very_large_tau_keeps_the_policy_at_the_base_model(tmp_path):
    base = tiny_model()
    free = make_trainer(tmp_path / "free", tiny_model(), beta=0.0, steps=12)
    free.train()
    anchored = make_trainer(tmp_path / "anchored", tiny_model(), beta=1e4, steps=12)
    anchored.train()
    _, kl_free = evaluate(free.accelerator.unwrap_model(free.model), base)
    reward_anchored, kl_anchored = evaluate(anchored.accelerator.unwrap_model(anchored.model), base)
    reward_base, _ = evaluate(base, base)
    assert abs(kl_anchored) < 0.2 * abs(kl_free), (kl_anchored, kl_free)
    assert abs(reward_anchored - reward_base) < 0.05


def test_kl_is_live_and_the_base_model_is_frozen(tmp_path):
    base_before = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    trainer = make_trainer(tmp_path, tiny_model(), beta=0.1, steps=6, lr=1e-2)
    trainer.train()
    ref = trainer.accelerator.unwrap_model(trainer.ref_model)
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(value, base_before[name], rtol=0, atol=0, msg=name)
    assert not any(p.requires_grad for p in ref.parameters())
    _, kl = evaluate(trainer.accelerator.unwrap_model(trainer.model), ref)
    assert kl > 1e-3
    assert [h["kl"] for h in trainer.state.log_history if "kl" in h][-1] != 0.0


@pytest.mark.parametrize("kl_in_loss", [False, True])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, kl_in_loss):
    straight = make_trainer(tmp_path / "straight", tiny_model(), steps=6, save_strategy="no", kl_in_loss=kl_in_loss)
    straight.train()

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    killed = make_trainer(
        tmp_path / "run", tiny_model(), steps=6, save_strategy="steps", save_steps=3, kl_in_loss=kl_in_loss
    )
    killed.add_callback(Kill())
    killed.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    state = json.loads((checkpoint / EMA_STATE_NAME).read_text())
    assert state["ema_baseline"] == pytest.approx(killed.ema_baseline)

    resumed = make_trainer(
        tmp_path / "run", tiny_model(), steps=6, save_strategy="steps", save_steps=3, kl_in_loss=kl_in_loss
    )
    before = time.process_time()
    resumed.train(resume_from_checkpoint=str(checkpoint))
    resumed_cpu = time.process_time() - before
    assert resumed.ema_baseline == pytest.approx(straight.ema_baseline)
    # CPU seconds of training, logged and summed over the resume (the MCMC-vs-RL comparison charges RL by it):
    # at step 6, the seconds the checkpoint recorded up to step 3 plus at most what the resumed train() used
    cpu = {h["step"]: h["cpu_s"] for h in resumed.state.log_history if "cpu_s" in h}
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    saved_cpu = [h["cpu_s"] for h in saved if "cpu_s" in h][-1]
    assert {3, 6} <= set(cpu) and cpu[3] == saved_cpu > 0
    assert cpu[3] < cpu[6] <= saved_cpu + resumed_cpu
    a = straight.accelerator.unwrap_model(straight.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpoint_carries_tokenizer_and_model_card(tmp_path):
    trainer = make_trainer(tmp_path, tiny_model(), steps=3, save_strategy="steps", save_steps=3)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-3"
    assert (checkpoint / "tokenizer_config.json").exists() and (checkpoint / "model.safetensors").exists()
    card = (tmp_path / "README.md").read_text()
    assert "anion_fraction" in card and "τ (KL coefficient) | 0.01" in card


def test_two_processes_make_the_same_update_as_one(tmp_path):
    """Same global batch of 8 fixed crystals: 1 process × 8 vs 2 gloo processes × 4 (torchrun, CPU)."""
    single = train_fixed(str(tmp_path / "one"), per_device_batch=8)
    one = single.accelerator.unwrap_model(single.model).state_dict()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        "-m",
        "tests.helpers.rl_toy",
        str(tmp_path / "two"),
        "4",
    ]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = torch.load(tmp_path / "two" / "params.pt")
    changed = max((one[k] - tiny_model().state_dict()[k]).abs().max().item() for k in one)
    assert changed > 1e-4  # the update is not trivially zero
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-5, msg=name)


def test_config_validation():
    with pytest.raises(ValueError, match="baseline"):
        CrystalRLConfig(output_dir="x", baseline="mean")
    with pytest.raises(ValueError, match="space groups"):
        space_group_prompts([0, 231])


def test_element_restricted_rl_is_refused():
    """The sampler masks elements but the likelihood in the PPO ratio and the KL does not: refused, not run wrong."""
    with pytest.raises(ValueError, match="element-restricted RL is not supported"):
        CrystalRLConfig(output_dir="x", use_cpu=True, elements=["Li", "O"])


def test_trl_advantage_normalisation_is_refused():
    """TRL normalises the advantages it computes; the trainer computes its own, so the flag would be silently unused."""
    with pytest.raises(ValueError, match="normalize_advantages=True is not supported"):
        CrystalRLConfig(output_dir="x", use_cpu=True, normalize_advantages=True)


def test_save_steps_off_the_sampling_cycle_are_aligned():
    """A checkpoint between two sampled batches cannot resume exactly (TRL keeps no position in the μ updates):
    save_steps is rounded to a multiple of the sampling cycle, with a note (issue 36: it was refused)."""
    assert (
        CrystalRLConfig(output_dir="x", use_cpu=True, save_strategy="steps", save_steps=4, num_iterations=3).save_steps
        == 3
    )
    assert CrystalRLConfig(output_dir="x", use_cpu=True, save_steps=0.4, max_steps=12).save_steps == 6  # 5 steps
    with pytest.raises(ValueError, match=r"max_steps=10 is not a multiple of num_iterations=3"):  # the final save
        CrystalRLConfig(output_dir="x", use_cpu=True, save_steps=6, max_steps=10)
    assert (
        CrystalRLConfig(output_dir="x", use_cpu=True, save_steps=6, max_steps=10, save_strategy="no").max_steps == 10
    )
    assert CrystalRLConfig(output_dir="x", use_cpu=True, save_steps=6).save_steps == 6
    assert CrystalRLConfig(output_dir="x", use_cpu=True, save_steps=4, save_strategy="no").save_steps == 4


def test_metrics_that_rewards_report_are_logged_and_drained(tmp_path):
    """``log_metric`` / ``log_extra`` of reward callables (e.g. ``ehull/failed_fraction``) reach the logs, and the
    pending buffers are emptied every batch instead of growing."""
    trainer = known_trainer(tmp_path, [ToyEhull(), logging_anion_share], max_steps=6)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logged) == 2  # two sampled batches, μ = 3
    for h in logged:
        for key in ("ehull/failed_fraction", "ehull/seconds", "ehull/cached_fraction", "anion_share/batch_mean"):
            assert h[key] is not None and np.isfinite(h[key]), key
        assert 0 <= h["ehull/failed_fraction"] <= 1
        # the baseline's own scale is logged beside it: the reward less τ·KL
        assert h["reward_shaped"] == pytest.approx(h["reward"] - trainer.beta * h["kl"], abs=1e-5)
    assert not trainer._pending_metrics and not trainer._pending_extra_logs
    assert len(trainer._logs["extra"]["anion_share"]) == 10


def test_per_step_crystal_metrics_match_the_evaluation_definitions(tmp_path):
    """Stable fraction (``stable_threshold``), structure / composition validity, batch uniqueness, single-element
    share, and "scorable" kept apart from "valid", on crystals whose properties are known by construction."""
    trainer = known_trainer(tmp_path)
    trainer._generate_and_score_completions(known_inputs())
    metrics = trainer._metrics["train"]
    for key, expected in KNOWN_FRACTIONS.items():
        assert metrics[key] == [pytest.approx(expected)], key

    strict = known_trainer(tmp_path / "strict", stable_threshold=-0.01)  # toy E_hull is ≥ 0: nothing is stable
    strict._generate_and_score_completions(known_inputs())
    assert strict._metrics["train"]["rewards/ehull/stable_fraction"] == [0.0]


@pytest.mark.parametrize("kl_in_loss", [False, True])
def test_unscorable_crystals_score_the_reference_failure_reward(tmp_path, kl_in_loss):
    """Default: a crystal no reward scores gets reward −10 (the reference's clipped E_hull), enters the baseline
    and is pushed away from — in both KL modes."""
    trainer = known_trainer(tmp_path, beta=0.1, kl_in_loss=kl_in_loss)
    out = trainer._generate_and_score_completions(known_inputs())
    ehull = np.array([0, 0, 0, 0.5, 1 / 6, np.nan, np.nan, 0, 0, 1 / 6])  # ToyEhull; 5 and 6 unscorable
    rewards = np.where(np.isnan(ehull), -10.0, -ehull)
    baseline = rewards.mean()  # b₀ = the first batch's mean; KL = 0 while the policy is p_base
    assert trainer.ema_baseline == pytest.approx(baseline, abs=1e-5)
    np.testing.assert_allclose(out["advantages"].numpy(), rewards - baseline, atol=1e-5)
    assert out["advantages"][5] < 0 and out["advantages"][5] == out["advantages"][6]
    assert trainer._metrics["train"]["scorable_fraction"] == [pytest.approx(0.8)]


def test_with_trls_failure_rule_unscorable_crystals_neither_pull_nor_push(tmp_path):
    """``failure_reward=None``: advantage 0 and, with ``kl_in_loss``, no KL term either (the loss is 0 when nothing
    is scorable, even after the policy moved away from p_base)."""
    trainer = known_trainer(
        tmp_path,
        [lambda prompts, completions, **kw: [None] * len(completions)],
        failure_reward=None,
        kl_in_loss=True,
        beta=1.0,
    )
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = trainer._generate_and_score_completions(known_inputs())
    assert torch.all(out["advantages"] == 0)
    assert (out["old_logps"] - out["ref_logps"]).abs().max() > 1e-3  # the KL term would not vanish by itself
    assert trainer._compute_loss(trainer.model, out).item() == 0.0


def test_rewards_are_clipped_to_the_reference_range(tmp_path):
    wild = [25.0, -30.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    trainer = known_trainer(tmp_path, [lambda prompts, completions, crystal, **kw: [wild[c] for c in crystal]])
    trainer._generate_and_score_completions(known_inputs())
    clipped = np.clip(wild, -10, 10)
    assert trainer.ema_baseline == pytest.approx(clipped.mean(), abs=1e-5)
    assert trainer._metrics["train"]["reward"] == [pytest.approx(clipped.mean(), abs=1e-5)]


def test_rloo_gives_the_only_scorable_crystal_of_a_group_advantage_zero(tmp_path):
    """As TRL: with no scorable sibling there is no leave-one-out baseline (0/0), hence no advantage."""
    trainer = known_trainer(tmp_path, baseline="rloo", failure_reward=None, beta=0.0)
    # Groups of num_generations = 2 consecutive rows: (4, 5): 5 unscorable; (5, 6): none; (7, 3) and (9, 8): both.
    out = trainer._generate_and_score_completions(known_inputs([4, 5, 5, 6, 7, 3, 9, 8]))
    expected = [0.0, 0.0, 0.0, 0.0, 0.5, -0.5, -1 / 6, 1 / 6]  # rewards: -1/6, ., ., ., 0, -1/2, -1/6, 0
    np.testing.assert_allclose(out["advantages"].numpy(), expected, atol=1e-6)


def test_rloo_groups_are_crystals_of_one_space_group(tmp_path):
    """The leave-one-out baseline is per space group only if TRL's sampler puts the num_generations copies of a
    prompt next to each other in the batch, as ``_advantages`` groups them (``configs/rl_ehull_near_hull_rloo.yaml``
    relies on it)."""
    trainer = make_trainer(tmp_path, tiny_model(), steps=6, batch=24, baseline="rloo", num_generations=4)
    seen, sample = [], trainer._sample
    trainer._sample = lambda space_groups, inputs: seen.append(space_groups.clone()) or sample(space_groups, inputs)
    trainer.train()
    groups = torch.cat(seen).view(-1, 4)
    assert len(seen) == 2 and torch.all(groups == groups[:, :1])
    assert len(set(groups[:, 0].tolist())) > 1  # and the groups differ: one prompt per group, not one per batch


def test_one_counted_line_replaces_trls_unscorable_warning(tmp_path, caplog):
    trainer = known_trainer(tmp_path)
    with caplog.at_level(logging.WARNING):
        trainer._generate_and_score_completions(known_inputs())
    messages = [r.getMessage() for r in caplog.records]
    assert not any("at least one reward function returns a valid reward" in m for m in messages)
    counted = [m for m in messages if "crystals unscorable" in m]
    assert counted == ["2 of 10 crystals unscorable (no reward function scored them): scored failure_reward=-10"]


def test_the_ema_baseline_is_restored_on_the_path_every_backend_takes(tmp_path):
    """DeepSpeed and FSDP resume without calling ``_load_from_checkpoint``; the baseline must come back anyway."""
    straight = make_trainer(tmp_path / "straight", tiny_model(), steps=6)
    straight.train()

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    killed = make_trainer(tmp_path / "run", tiny_model(), steps=6, save_strategy="steps", save_steps=3)
    killed.add_callback(Kill())
    killed.train()
    checkpoint = str(tmp_path / "run" / "checkpoint-3")

    # The hook DeepSpeed's and FSDP's resume reaches (after deepspeed_load_checkpoint / load_fsdp_model).
    fresh = make_trainer(tmp_path / "run", tiny_model(), steps=6, save_strategy="steps", save_steps=3)
    fresh.create_optimizer_and_scheduler(num_training_steps=6)
    assert fresh.ema_baseline is None
    fresh._load_optimizer_and_scheduler(checkpoint)
    assert fresh.ema_baseline == pytest.approx(killed.ema_baseline)

    # A whole resume in which our `_load_from_checkpoint` is never called (weights loaded as Trainer's own).
    resumed = make_trainer(tmp_path / "run", tiny_model(), steps=6, save_strategy="steps", save_steps=3)
    resumed._load_from_checkpoint = types.MethodType(Trainer._load_from_checkpoint, resumed)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.ema_baseline == pytest.approx(straight.ema_baseline)
    a = straight.accelerator.unwrap_model(straight.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_resumed_sun_aware_run_still_knows_what_it_produced(tmp_path):
    """The S.U.N.-aware reward's archive is saved with each checkpoint and restored on resume; before, a resumed run
    started empty and scored every crystal produced before the checkpoint as unique again."""

    def sun_reward():
        return SUNReward(ToyEhull(), NoveltyReward(reference=None, duplicate_penalty=0.5))

    produced = sun_reward()
    run = known_trainer(tmp_path, reward_funcs=produced, max_steps=3, save_strategy="steps", save_steps=3)
    run.train()
    checkpoint = tmp_path / "checkpoint-3"
    assert (checkpoint / REWARD_STATE_NAME.format(suffix="")).exists()
    archived = {e["formula"] for e in produced.state_dict()["archive"]["entries"]}
    assert archived  # the run's crystals (which 5 of the 10 known ones the sampler drew, each twice)

    restored = sun_reward()
    resumed = known_trainer(tmp_path, reward_funcs=restored, max_steps=6, save_strategy="steps", save_steps=3)
    resumed.create_optimizer_and_scheduler(num_training_steps=6)
    resumed._load_optimizer_and_scheduler(str(checkpoint))  # the hook every backend's resume passes
    assert restored.state_dict() == produced.state_dict()

    rows = [r for r, formula in [(0, "NaCl"), (3, "Cu"), (4, "NaCl2"), (7, "MgO"), (8, "KCl")] if formula in archived]
    t = known_tokens(rows)  # crystals produced before the checkpoint
    again = [CrystalTokens(int(g), w, a, x, lat) for g, w, a, x, lat in zip(t["G"], t["W"], t["A"], t["XYZ"], t["L"])]
    unique = sun_reward()(completions=again)  # what the resumed run used to see
    assert restored(completions=again) == pytest.approx([u - 0.5 for u in unique])  # duplicates: −0.5 each
