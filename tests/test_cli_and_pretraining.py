import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from crystalformer_rl.commands import build_parser, main, parse_args
from crystalformer_rl.commands.train import load_reward
from crystalformer_rl.modeling_crystalformer import CrystalFormerForCrystalGeneration
from crystalformer_rl.pretrained import load_model, space_group_distribution
from crystalformer_rl.tokenization import CrystalCollator, CrystalTokens
from crystalformer_rl.trainers.utils import training_space_groups
from tests.helpers.rl_toy import tiny_model


MP20_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp20" / "val.csv.gz"


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def token_parquet(shared, tmp_path_factory):
    """The reference tokens of 32 real MP crystals as a training parquet (the corpus layout)."""
    ref = np.load(shared / "fixtures" / "reference_parity" / "tokens.npz")
    rows = [
        CrystalTokens(int(ref["G"][i]), ref["W"][i], ref["A"][i], ref["XYZ"][i], ref["L"][i]).as_dict()
        for i in range(len(ref["G"]))
    ]
    path = tmp_path_factory.mktemp("corpus") / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model = tiny_model()
    model.save_pretrained(folder)
    (folder / "space_group_distribution.json").write_text(json.dumps({"225": 3, "14": 1}))
    return folder


def test_pretrain_command_trains_validates_checkpoints_and_resumes(token_parquet, tmp_path):
    out = tmp_path / "pretrain"
    common = [
        "--train_data",
        str(token_parquet),
        "--validation_data",
        str(token_parquet),
        "--model_size",
        "xs",
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--eval_steps",
        "4",
        "--save_steps",
        "4",
        "--logging_steps",
        "2",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
    ]
    trainer = main(["pretrain", *common, "--max_steps", "4"]) or None
    assert trainer is None  # main returns an exit code
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert json.loads((out / "space_group_distribution.json").read_text())
    assert (out / "loss_curves.png").stat().st_size > 1000
    from crystalformer_rl.commands.train import run_pretrain

    resumed = run_pretrain(
        *parse_args("pretrain", [*common, "--max_steps", "8", "--resume_from_checkpoint", str(out / "checkpoint-4")])
    )
    history = resumed.state.log_history
    evals = [h for h in history if "eval_loss" in h]
    assert {"eval_loss_w", "eval_loss_a", "eval_loss_xyz", "eval_loss_l"} <= set(evals[-1])
    assert any("train_loss_xyz" in h for h in history)
    assert resumed.state.global_step == 8
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] or len(evals) == 1
    assert CrystalFormerForCrystalGeneration.from_pretrained(out).config.num_layers == 2


def test_sample_command_writes_csv_cifs_and_timing(tiny_folder, tmp_path):
    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--model",
                str(tiny_folder),
                "-n",
                "12",
                "-o",
                str(out),
                "--format",
                "csv",
                "cif",
                "extxyz",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    table = pd.read_csv(out / "samples.csv")
    assert len(table) == 12 and set(table.G) <= {225, 14}  # the model's shipped space-group distribution
    assert {"tokens", "logp", "logp_w", "logp_a", "logp_xyz", "logp_l", "formula"} <= set(table.columns)
    valid = table[table.valid_tokens]
    assert len(list((out / "cifs").glob("*.cif"))) == len(valid) > 0
    assert CrystalTokens.from_string(valid.tokens.iloc[0]).to_structure().num_sites > 0
    meta = json.loads((out / "samples.csv.meta.json").read_text())
    assert meta["sampling_seconds"] > 0 and meta["num_samples"] == 12


def test_sample_command_honours_space_group_and_elements(tiny_folder, tmp_path):
    out = tmp_path / "lah"
    main(["sample", "--model", str(tiny_folder), "-g", "225", "-n", "6", "-e", "La", "H", "-o", str(out)])
    table = pd.read_csv(out / "samples.csv")
    assert set(table.G) == {225}
    for text in table[table.valid_tokens].tokens:
        assert set(CrystalTokens.from_string(text).to_structure().composition.chemical_system.split("-")) <= {
            "La",
            "H",
        }


def test_rl_command_from_a_yaml_config(tiny_folder, tmp_path):
    config = yaml.safe_load((REPO / "configs" / "rl_ehull.yaml").read_text())
    config.update(
        model=str(tiny_folder),
        rewards=["tests.helpers.rl_toy:anion_fraction"],
        output_dir=str(tmp_path / "rl"),
        per_device_train_batch_size=8,
        max_steps=3,
        save_steps=3,
        use_cpu=True,
        disable_tqdm=True,
    )
    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["rl", "--config", str(path)]) == 0
    out = tmp_path / "rl"
    assert (out / "model.safetensors").exists() and (out / "checkpoint-3" / "ema_baseline.json").exists()
    # a checkpoint is a model folder like the final one: it draws the base model's space groups when sampled
    for folder in (out, out / "checkpoint-3"):
        assert space_group_distribution(folder) == {225: 3, 14: 1}
    assert (out / "rl_curves.png").stat().st_size > 1000
    card = (out / "README.md").read_text()
    assert str(tiny_folder) in card and "anion_fraction" in card
    assert json.loads((out / "log_history.json").read_text())[0]["kl"] == pytest.approx(0.0, abs=1e-5)


def test_shipped_configs_parse():
    from trl import TrlParser

    from crystalformer_rl.commands.train import RLScriptArguments
    from crystalformer_rl.trainers import CrystalRLConfig

    for name, tau in (("rl_ehull.yaml", 0.1), ("rl_dielectric.yaml", 2.0)):
        script, config = TrlParser((RLScriptArguments, CrystalRLConfig)).parse_args_and_config(
            ["--config", str(REPO / "configs" / name)]
        )
        assert config.beta == tau and config.num_iterations == 3 and config.epsilon == 0.2
        assert config.save_steps % config.num_iterations == 0
        if name == "rl_dielectric.yaml":  # the reference's dummy value 0, and no E_hull clip on the figure of merit
            assert config.failure_reward == 0.0 and config.reward_clip_range is None
        else:
            assert config.failure_reward == -10.0 and tuple(config.reward_clip_range) == (-10.0, 10.0)
    for path in sorted((REPO / "configs").glob("rl_*.yaml")):  # every shipped RL config, with valid reward kwargs
        script, config = TrlParser((RLScriptArguments, CrystalRLConfig)).parse_args_and_config(["--config", str(path)])
        assert config.save_steps % config.num_iterations == 0, path.name
        kwargs = json.loads(script.reward_kwargs) if script.reward_kwargs else {}
        assert set(kwargs) <= set(script.rewards), path.name


def test_accelerate_configs_load_and_validate():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    zero2 = load_config_from_file(str(REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml"))
    assert zero2.distributed_type == DistributedType.DEEPSPEED
    assert zero2.deepspeed_config["zero_stage"] == 2 and zero2.mixed_precision == "no"
    ddp = load_config_from_file(str(REPO / "configs" / "accelerate" / "multi_gpu.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU
    single = load_config_from_file(str(REPO / "configs" / "accelerate" / "single_gpu.yaml"))
    assert single.distributed_type == DistributedType.NO


def test_prompts_and_rewards_resolution(tiny_folder, token_parquet):
    assert training_space_groups("225,221") == [225, 221]
    assert sorted(set(training_space_groups(str(token_parquet)))) == sorted(
        set(pd.read_parquet(token_parquet).G.tolist())
    )
    assert training_space_groups("default", str(tiny_folder)).count(225) == 3
    assert load_reward("tests.helpers.rl_toy:anion_fraction").__name__ == "anion_fraction"
    with pytest.raises(ValueError, match="unknown reward"):
        load_reward("nonsense")


def test_load_model_errors_are_clear(tmp_path):
    with pytest.raises(OSError):
        load_model(tmp_path / "missing-folder")


def test_help_lists_every_command():
    text = build_parser().format_help()
    for command in ("sample", "evaluate", "prepare-data", "convert", "pretrain", "rl"):
        assert command in text


def test_sft_baseline_keeps_low_ehull_crystals_and_fine_tunes(tiny_folder, tmp_path):
    """Sample → (relax) → keep E_hull < 0.1 → fine-tune; a cheap E_hull stands in for the potential here."""
    from crystalformer_rl.commands.train import run_sft

    def fake_ehull(structures):  # every other crystal "stable"
        return [0.0 if i % 2 == 0 else 1.0 for i, _ in enumerate(structures)]

    out = tmp_path / "sft"
    trainer = run_sft(
        *parse_args(
            "sft",
            [
                "--model",
                str(tiny_folder),
                "--num_samples",
                "40",
                "--relax",
                "false",
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "2",
                "--learning_rate",
                "1e-5",
                "--use_cpu",
                "true",
                "--disable_tqdm",
                "true",
            ],
        ),
        ehull_fn=fake_ehull,
    )
    data = pd.read_parquet(out / "sft_data.parquet")
    counts = json.loads((out / "sft_selection.json").read_text())
    assert counts["sampled"] == 40 and 0 < counts["kept"] == len(data) < 40
    assert (data.e_hull < 0.1).all()
    assert trainer.state.global_step == 2 and (out / "model.safetensors").exists()
    # SFT ends as rl and dpo do (issue 35): the log history, a model card naming its base, the base model's files
    history = json.loads((out / "log_history.json").read_text())
    assert history and history[-1]["step"] == 2
    card = (out / "README.md").read_text()
    # the Hub's metadata (issue 36): a base_model that is a local path is dropped from it, the text still names it
    from huggingface_hub import ModelCard

    metadata = ModelCard(card).data
    assert metadata.library_name == "transformers" and "sft" in metadata.tags and metadata.base_model is None
    assert f"`{tiny_folder}`" in card and (out / "tokenizer_config.json").exists()


def test_pretraining_batches_are_length_grouped_and_reshuffled(shared, tmp_path):
    """The default sampler groups crystals of similar site counts (from `num_sites`, or counted from A when
    the column is missing) and draws a new order every epoch."""
    from datasets import Dataset
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from crystalformer_rl.trainers import CrystalPretrainConfig, CrystalPretrainer

    ref = np.load(shared / "fixtures" / "reference_parity" / "tokens.npz")
    rows = [
        CrystalTokens(int(ref["G"][i]), ref["W"][i], ref["A"][i], ref["XYZ"][i], ref["L"][i]).as_dict()
        for i in range(len(ref["G"]))
    ] * 8
    sites = [int(np.count_nonzero(r["A"])) for r in rows]
    assert len(set(sites)) > 3
    args = CrystalPretrainConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True, eval_strategy="no", report_to="none"
    )
    assert args.train_sampling_strategy == "group_by_length"
    with_column = Dataset.from_list([{**r, "num_sites": n} for r, n in zip(rows, sites)])
    for dataset in (with_column, Dataset.from_list(rows)):
        trainer = CrystalPretrainer(tiny_model(), args, train_dataset=dataset)
        sampler = trainer._get_train_sampler()
        assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths == sites
        first, second = list(sampler), list(sampler)
        assert sorted(first) == sorted(second) == list(range(len(rows))) and first != second
        # Within a batch the site counts are close: far less spread than in a random batch.
        spread = np.mean([np.ptp([sites[i] for i in first[k : k + 8]]) for k in range(0, len(first), 8)])
        assert spread < 0.5 * np.ptp(sites)


def test_augmented_pretraining_validates_on_the_tokenizers_own_description(shared, tmp_path):
    """With `random_representatives` the training batches are redrawn descriptions, the validation batches are the
    crystals exactly as stored."""
    from crystalformer_rl.trainers import CrystalPretrainConfig, CrystalPretrainer

    ref = np.load(shared / "fixtures" / "reference_parity" / "tokens.npz")
    rows = [
        CrystalTokens(int(ref["G"][i]), ref["W"][i], ref["A"][i], ref["XYZ"][i], ref["L"][i]).as_dict()
        for i in range(len(ref["G"]))
    ]
    args = CrystalPretrainConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        eval_strategy="no",
        random_representatives=True,
        seed=0,
    )
    trainer = CrystalPretrainer(tiny_model(), args)
    stored = CrystalCollator(return_tensors="pt")(rows)
    validation, training = trainer._eval_collator(rows), trainer.data_collator(rows)
    assert all(torch.equal(validation[k], stored[k]) for k in stored)
    assert not torch.allclose(training["XYZ"], stored["XYZ"])


def test_a_short_prompt_list_fills_whole_batches():
    """`--prompts 225` (one row) once gave an empty epoch and an RL run of 0 steps; repeats keep the proportions."""
    from types import SimpleNamespace

    from crystalformer_rl.trainers.utils import fill_prompts

    config = SimpleNamespace(per_device_train_batch_size=100, gradient_accumulation_steps=1)
    filled = fill_prompts([225], config)
    assert len(filled) >= 800 and set(filled) == {225}
    mixed = fill_prompts([225, 221, 221], config)
    assert mixed.count(221) == 2 * mixed.count(225)
    long = list(range(1, 231)) * 4
    assert fill_prompts(long, config) == long


def test_length_grouping_works_on_a_small_set():
    """1,000 real MP-20 crystals at batch 100: Trainer's sampler sorts mega-batches of only 2 batches, so most batches
    pad to a long crystal; ours sorts the whole set (below 50 batches) and pads as little as a full sort, shuffles
    the batch order each epoch, yields every index once, and keeps the one short batch last (the DataLoader cuts
    the order every 100 indices)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from crystalformer_rl.trainers.pretrain_trainer import length_grouped_indices

    atoms = pd.read_csv(MP20_VAL, usecols=["nsites"], nrows=1050).nsites.tolist()

    def padded(lengths, order, batch=100):
        cuts = [order[k : k + batch] for k in range(0, len(order), batch)]
        return sum(max(lengths[i] for i in cut) * len(cut) for cut in cuts)

    def seeded(seed):
        return torch.Generator().manual_seed(seed)

    lengths = atoms[:1000]
    best = padded(lengths, sorted(range(1000), key=lambda i: -lengths[i]))
    ours = length_grouped_indices(lengths, 100, generator=seeded(0))
    assert sorted(ours) == list(range(1000))
    assert padded(lengths, ours) == best
    assert padded(lengths, get_length_grouped_indices(lengths, 100, generator=seeded(0))) > 1.2 * best
    again = length_grouped_indices(lengths, 100, generator=seeded(1))
    assert ours[::100] != again[::100]  # another epoch, another batch order

    uneven = length_grouped_indices(atoms, 100, generator=seeded(0))  # 10 full batches and one of 50
    assert sorted(uneven) == list(range(1050))
    assert padded(atoms, uneven) <= 1.05 * padded(atoms, sorted(range(1050), key=lambda i: -atoms[i]))
