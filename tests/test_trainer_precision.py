"""The trainers' precision and host-memory options (issue 12, item 2), checked on the CPU: dataloader pinning only
with CUDA, and the RL sampler under the same autocast as the likelihoods when ``bf16`` is on."""

import torch

from crystalformer_rl.trainers import CrystalDPOConfig, CrystalPretrainConfig, CrystalRLConfig, CrystalRLOOTrainer
from tests.helpers.rl_toy import anion_fraction, fixed_prompts, fixed_rollout, tiny_model


def test_dataloader_memory_is_pinned_only_when_training_on_cuda(tmp_path):
    for config in (CrystalPretrainConfig, CrystalRLConfig, CrystalDPOConfig):
        for use_cpu in (True, False):
            args = config(output_dir=str(tmp_path), use_cpu=use_cpu)
            assert args.dataloader_pin_memory == (args.device.type == "cuda"), (config.__name__, use_cpu)
        assert not config(output_dir=str(tmp_path), dataloader_pin_memory=False).dataloader_pin_memory


def test_documented_precision_defaults(tmp_path):
    for config in (CrystalPretrainConfig, CrystalRLConfig):
        args = config(output_dir=str(tmp_path), use_cpu=True)
        assert args.bf16 is False and args.tf32 is None, config.__name__
        for name in ("bf16", "tf32", "dataloader_pin_memory"):
            assert "Default" in config.__dataclass_fields__[name].metadata["help"], (config.__name__, name)


def test_the_rl_sampler_runs_under_the_trainers_autocast(tmp_path):
    """accelerate wraps ``forward`` in autocast, but the sampler calls the modules directly: the trainer gives it
    the same precision (bf16 autocast with ``bf16=True``, none by default)."""
    seen = []

    def rollout(model, inputs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return fixed_rollout(model, inputs)

    for bf16 in (False, True):
        args = CrystalRLConfig(
            output_dir=str(tmp_path / f"bf16-{bf16}"),
            per_device_train_batch_size=4,
            use_cpu=True,
            bf16=bf16,
            save_strategy="no",
        )
        trainer = CrystalRLOOTrainer(
            tiny_model(), anion_fraction, args=args, train_dataset=fixed_prompts(8), rollout_fn=rollout
        )
        inputs = [{"prompt": int(g), "crystal": i} for i, g in enumerate(fixed_prompts(4)["prompt"])]
        tokens = trainer._sample(torch.tensor([x["prompt"] for x in inputs]), inputs)
        assert tokens["XYZ"].dtype == tokens["L"].dtype == torch.float32  # rollouts leave autocast in float32
    assert seen == [None, torch.bfloat16]
