import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import TrainerCallback

from crystalformer_rl.tokenization import CrystalTokens
from crystalformer_rl.trainers import CrystalDPOConfig, CrystalDPOTrainer
from crystalformer_rl.trainers.crystal_dpo_trainer import REF_COLUMNS, REFERENCE_STATE_NAME, dpo_loss
from crystalformer_rl.trainers.dpo_pairs import (
    build_relaxation_pairs,
    build_reward_pairs,
    pair_by_reward,
    pairs_dataset,
    pairs_from_table,
    split_pairs,
)
from tests.helpers.rl_toy import tiny_model


N_CRYSTALS = 40  # real MP-20 crystals read for the pairs (a few fail to tokenize or are skipped)
EXPANSION = 1.25  # the rejected crystal: the same one with 25 % longer cell edges (~2x the volume)


@pytest.fixture(scope="module")
def real_pairs(shared):
    """Real MP-20 crystals (chosen, CIF text) against the same crystal expanded (rejected, a Structure dict):
    the preference is systematic, so a tiny model learns it in a few steps and it generalises to held-out pairs."""
    from pymatgen.core import Structure

    frame = pd.read_csv(shared / "data/mp20_pilot/val.csv.gz", nrows=N_CRYSTALS)
    expanded = []
    for cif in frame.cif:
        structure = Structure.from_str(cif, fmt="cif")
        structure.scale_lattice(structure.volume * EXPANSION**3)
        expanded.append(structure.as_dict())
    pairs, failures = pairs_from_table(list(frame.cif), expanded, ids=list(frame.material_id))
    assert len(pairs) >= N_CRYSTALS - 5, failures
    return pairs_dataset(pairs)


def make_trainer(tmp_path, train, valid=None, model=None, steps=20, beta=0.1, lr=3e-3, batch=8, **kwargs):
    args = CrystalDPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=64,
        max_steps=steps,
        learning_rate=lr,
        beta=beta,
        use_cpu=True,
        seed=0,
        logging_steps=kwargs.pop("logging_steps", 1),
        eval_strategy=kwargs.pop("eval_strategy", "no"),
        save_strategy=kwargs.pop("save_strategy", "no"),
        kl_num_samples=kwargs.pop("kl_num_samples", 64),
        report_to="none",
        **kwargs,
    )
    return CrystalDPOTrainer(
        model if model is not None else tiny_model(), args, train_dataset=train, eval_dataset=valid
    )


# ------------------------------------------------------------------------------------------------- the loss
# Two pairs by hand: z = (c − r) − (c_ref − r_ref) = (−10 + 12) − (−11 + 11) = 2 and (−20 + 15) − (−18 + 16) = −3.
CHOSEN, REJECTED = [-10.0, -20.0], [-12.0, -15.0]
REF_CHOSEN, REF_REJECTED = [-11.0, -18.0], [-11.0, -16.0]
BETA = 0.5  # βz = 1 and −1.5


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize(
    "loss_type, smoothing, gamma, expected",
    [
        ("sigmoid", 0.0, 0.0, (-log_sigmoid(1.0) - log_sigmoid(-1.5)) / 2),
        (
            "sigmoid",
            0.1,
            0.0,
            (-0.9 * log_sigmoid(1.0) - 0.1 * log_sigmoid(-1.0) - 0.9 * log_sigmoid(-1.5) - 0.1 * log_sigmoid(1.5)) / 2,
        ),
        ("ipo", 0.0, 0.0, ((2 - 1) ** 2 + (-3 - 1) ** 2) / 2),  # 1/(2β) = 1
        ("sigmoid", 0.0, 0.01, (-log_sigmoid(1.0) - log_sigmoid(-1.5)) / 2 + 0.01 * 15),  # −γ·mean log π(x_w)
        ("ipo", 0.0, 0.01, 8.5 + 0.01 * 15),
    ],
)
def test_loss_matches_the_hand_computed_formula(loss_type, smoothing, gamma, expected):
    chosen = torch.tensor(CHOSEN, requires_grad=True)
    loss, z, _ = dpo_loss(
        chosen,
        torch.tensor(REJECTED),
        torch.tensor(REF_CHOSEN, dtype=torch.float64),
        torch.tensor(REF_REJECTED, dtype=torch.float64),
        beta=BETA,
        loss_type=loss_type,
        label_smoothing=smoothing,
        rpo_alpha=gamma,
    )
    torch.testing.assert_close(z, torch.tensor([2.0, -3.0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(chosen.grad).all()


def test_config_refuses_what_the_reference_does_not_define():
    with pytest.raises(ValueError, match="sigmoid loss only"):
        CrystalDPOConfig(output_dir="x", loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        CrystalDPOConfig(output_dir="x", loss_type="hinge")
    with pytest.raises(ValueError, match="beta"):
        CrystalDPOConfig(output_dir="x", beta=0.0)


def test_trainer_internals_we_override_are_still_there():
    """Contract test: CrystalDPOTrainer relies on these ``transformers.Trainer`` internals; fail loudly if they move."""
    import inspect

    from transformers import Trainer

    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert "trial" in inspect.signature(Trainer._get_output_dir).parameters
    # The training dataloader is built inside train(), i.e. after our train() restored a checkpoint's reference.
    assert "self.get_train_dataloader()" in inspect.getsource(Trainer._inner_training_loop)


# ------------------------------------------------------------------------------------------------ the pairs
NACL = "225-a-Na-0-0-0-b-Cl-1/2-1/2-1/2-5.64-5.64-5.64-90-90-90"
NACL_EXPANDED = "225-a-Na-0-0-0-b-Cl-1/2-1/2-1/2-7-7-7-90-90-90"


def test_table_pairs_skip_and_report_bad_rows():
    tokens = CrystalTokens.from_string(NACL)
    chosen = [NACL, tokens, tokens.as_dict(), NACL, None]
    rejected = [NACL_EXPANDED, NACL_EXPANDED, "data_x\n_cell_length_a 3\n", NACL, NACL_EXPANDED]
    pairs, failures = pairs_from_table(chosen, rejected, ids=["ok", "tokens", "bad-cif", "same", "missing"])
    assert list(pairs["id"]) == ["ok", "tokens"]
    assert pairs.loc[0, "chosen_G"] == 225 and pairs.loc[0, "chosen_A"] == [11, 17]
    reasons = dict(zip(failures["id"], failures["error_type"]))
    assert set(reasons) == {"bad-cif", "same", "missing"}
    assert reasons["same"] == "UnusablePairError"
    assert dict(zip(failures["id"], failures["side"]))["bad-cif"] == "rejected"


def test_reward_pairs_are_within_a_space_group_and_by_a_margin():
    rows, counts = pair_by_reward([225, 225, 225, 225, 1, 1, 2], [0.0, -1.0, -0.05, -0.2, 0.3, 0.2, 5.0], margin=0.2)
    assert rows == [(0, 1)]  # 225: best (0) vs worst (1); 2 vs 3 differ by < 0.2; group 1 by 0.1; group 2 alone
    assert counts == {"below_margin": 2, "alone_in_space_group": 1}
    crystals = [CrystalTokens.from_string(NACL), CrystalTokens.from_string(NACL_EXPANDED)] * 2
    crystals.append(CrystalTokens.from_string("221-a-Cs-0-0-0-b-Cl-1/2-1/2-1/2-4.1-4.1-4.1-90-90-90"))

    def smaller_is_better(prompts, completions, **kwargs):  # a cheap reward; the CsCl crystal is unscorable
        return [None if c.G == 221 else -float(c.lattice[0]) for c in completions]

    pairs, failures, summary = build_reward_pairs(None, smaller_is_better, [], margin=0.5, crystals=crystals)
    assert summary == {"sampled": 5, "unscorable": 1, "below_margin": 0, "alone_in_space_group": 0, "pairs": 2}
    assert (pairs["chosen_reward"] > pairs["rejected_reward"] + 0.5).all()
    assert list(failures["error_type"]) == ["Unscorable"]


def test_relaxation_pairs_prefer_the_relaxed_crystal():
    def relax_fn(structures):  # a stand-in potential: every rock salt relaxes to a = 5.64 Å, CsCl diverges
        relaxed = []
        for structure in structures:
            if structure.composition.reduced_formula == "CsCl":
                raise RuntimeError("diverged")
            structure = structure.copy()
            structure.scale_lattice(5.64**3)
            relaxed.append((structure, -1.0))
        return relaxed

    cscl = "221-a-Cs-0-0-0-b-Cl-1/2-1/2-1/2-4.1-4.1-4.1-90-90-90"
    crystals = [CrystalTokens.from_string(t) for t in (NACL_EXPANDED, NACL, cscl)]
    pairs, failures, summary = build_relaxation_pairs(None, [], relax_fn=relax_fn, crystals=crystals)
    assert list(pairs["id"]) == ["sample-000000"]
    np.testing.assert_allclose(pairs.loc[0, "chosen_L"], CrystalTokens.from_string(NACL).L, rtol=1e-4)
    np.testing.assert_allclose(pairs.loc[0, "rejected_L"], crystals[0].L)
    reasons = dict(zip(failures["id"], failures["error_type"]))
    assert reasons == {"sample-000001": "UnusablePairError", "sample-000002": "RelaxationError"}  # NaCl: relaxed
    assert summary == {"sampled": 3, "relaxed": 2, "pairs": 1}


# ------------------------------------------------------------------------------------------------ training
def test_held_out_preference_accuracy_rises_on_real_pairs(real_pairs, tmp_path):
    train, valid = split_pairs(real_pairs, validation_fraction=0.25, seed=0)
    trainer = make_trainer(tmp_path, train, valid, steps=16)
    assert all(c in trainer.train_dataset.column_names for c in REF_COLUMNS)
    before = trainer.evaluate()
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-3)  # the policy starts as π_ref: z = 0
    assert before["eval_kl"] == pytest.approx(0.0, abs=1e-4)
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_rewards/accuracies"] > 0.5, after
    assert after["eval_loss"] < before["eval_loss"] - 0.05
    assert after["eval_rewards/margins"] > 0
    logged = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    assert len(logged) == 16
    assert logged[-1]["rewards/accuracies"] > logged[0]["rewards/accuracies"]
    assert all(np.isfinite(h["rewards/chosen"]) and np.isfinite(h["logps/rejected"]) for h in logged)


def test_a_large_beta_stays_closer_to_the_reference(real_pairs, tmp_path):
    train, _ = split_pairs(real_pairs, validation_fraction=0.0, seed=0)
    kl = {}
    for beta in (0.01, 10.0):
        trainer = make_trainer(tmp_path / str(beta), train, steps=16, beta=beta)
        trainer.train()
        kl[beta] = trainer.evaluate()["eval_kl"]
    assert kl[10.0] < 0.5 * kl[0.01], kl


def test_resume_lands_on_the_parameters_of_an_uninterrupted_run(real_pairs, tmp_path):
    train, _ = split_pairs(real_pairs, validation_fraction=0.0, seed=0)
    common = {"steps": 6, "kl_num_samples": 0, "lr": 1e-2}
    straight = make_trainer(tmp_path / "straight", train, **common)
    straight.train()

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    killed = make_trainer(tmp_path / "run", train, save_strategy="steps", save_steps=3, **common)
    killed.add_callback(Kill())
    killed.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert (checkpoint / REFERENCE_STATE_NAME).exists() and (checkpoint / "model.safetensors").exists()
    assert (checkpoint / "tokenizer_config.json").exists()

    # Handed another starting model, the resumed run still uses the checkpoint's reference log-probs.
    resumed = make_trainer(
        tmp_path / "run", train, model=tiny_model(seed=1), save_strategy="steps", save_steps=3, **common
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    np.testing.assert_allclose(resumed.train_dataset[REF_COLUMNS[0]], straight.train_dataset[REF_COLUMNS[0]])
    a = straight.accelerator.unwrap_model(straight.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_dpo_command_builds_pairs_trains_and_writes_its_outputs(tmp_path):
    """The CLI end to end on a tiny model and a cheap reward (no potential): pairs, split, training, files."""
    from crystalformer_rl.commands import parse_args
    from crystalformer_rl.commands.train import run_dpo

    tiny_model().save_pretrained(tmp_path / "tiny")
    out = tmp_path / "run"
    argv = [
        "--model",
        str(tmp_path / "tiny"),
        "--reward",
        "tests.test_dpo:cell_edge_reward",
        "--num_samples",
        "48",
        "--prompts",
        "1,2,225",
        "--margin",
        "0.1",
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--kl_num_samples",
        "8",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
    ]
    trainer = run_dpo(*parse_args("dpo", argv))
    assert trainer.state.global_step == 2
    for name in ("pairs.parquet", "pair_failures.csv", "pairs_summary.json", "model.safetensors", "log_history.json"):
        assert (out / name).exists(), name
    assert any("eval_rewards/accuracies" in h for h in trainer.state.log_history)


def cell_edge_reward(prompts, completions, **kwargs):
    """A cheap deterministic reward for the CLI test: shorter model-space cell edges are better."""
    return [-float(np.abs(c.L[:3]).mean()) for c in completions]


def test_dpo_command_reports_bad_options_in_one_line(tmp_path):
    from crystalformer_rl.commands import main

    assert main(["dpo", "--loss_type", "ipo", "--label_smoothing", "0.1", "--output_dir", str(tmp_path)]) == 2
    assert main(["dpo", "--pairs", str(tmp_path / "missing.csv"), "--output_dir", str(tmp_path)]) == 2
