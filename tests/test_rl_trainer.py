import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trl
from transformers import TrainerCallback

from crystalformer_rl.tokenization import CrystalTokens
from crystalformer_rl.trainers import CrystalRLConfig, CrystalRLOOTrainer, space_group_prompts
from crystalformer_rl.trainers.crystal_rloo_trainer import EMA_STATE_NAME
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
    assert all(np.isfinite(h["kl"]) and 0 <= h["valid_fraction"] <= 1 for h in logged)


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
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.ema_baseline == pytest.approx(straight.ema_baseline)
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
