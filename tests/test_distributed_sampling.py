"""Two gloo processes that really sample (issue 12, item 3).

Each of two ranks (``torchrun``, CPU) samples its own crystals with the real sampler, scores them with its own
reward call, and the two make one DDP update per step. With the same prompts on both ranks the crystals differ
only through the per-rank seed, so they must differ; and one process given the union of what the two ranks
sampled (replayed through ``rollout_fn``) must make the same updates and end on the same parameters and baseline.
Six optimizer steps are two sampled batches (μ = 3): the second one is drawn by the updated policy, so both ranks
must also still be in lockstep when they sample again.

Run as a module under ``torchrun`` it trains and saves what each rank sampled, scored and ended on.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from crystalformer_rl.trainers import CrystalRLConfig, CrystalRLOOTrainer, space_group_prompts
from tests.helpers.rl_toy import anion_fraction
from tests.helpers.rl_toy import tiny_model as _tiny_model


REPO = Path(__file__).resolve().parents[1]
SPACE_GROUP = 62  # Pnma: every prompt is the same group, so only the per-rank seed can make the ranks differ
PER_RANK = 6
STEPS = 6  # two sampled batches of μ = 3 updates each


def tiny_model():
    """Without dropout: its masks are drawn per process, so with it two ranks and one process could never agree."""
    return _tiny_model(hidden_dropout=0.0, attention_dropout=0.0)


def rl_config(output_dir: str, per_device_batch: int) -> CrystalRLConfig:
    return CrystalRLConfig(
        output_dir=output_dir,
        per_device_train_batch_size=per_device_batch,
        max_steps=STEPS,
        learning_rate=1e-2,
        optim="sgd",  # Adam would turn float-rounding differences in near-zero gradients into whole steps
        beta=0.1,
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=3,
        log_crystal_metrics=False,
    )


def prompts():
    return space_group_prompts([SPACE_GROUP] * 48)


class RecordingTrainer(CrystalRLOOTrainer):
    """Keeps every batch this process sampled (after the trainer's trimming, as it was scored and trained on)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rollouts: list[dict[str, torch.Tensor]] = []

    def _sample(self, space_groups, inputs):
        tokens = super()._sample(space_groups, inputs)
        self.rollouts.append({k: v.detach().cpu().clone() for k, v in tokens.items()})
        return tokens


def recording_reward(record: list):
    """``anion_fraction``, also keeping what this process was asked to score."""

    def anion_fraction_recorded(prompts, completions, **kwargs):
        values = anion_fraction(prompts, completions)
        record.append({"A": [c.A.tolist() for c in completions], "values": values})
        return values

    anion_fraction_recorded.__name__ = "anion_fraction"
    return anion_fraction_recorded


def union(first: dict, second: dict) -> dict:
    """Two ranks' rollouts as one batch, padded to the longer one's sites (padding changes no likelihood)."""
    sites = max(first["W"].shape[1], second["W"].shape[1])

    def padded(tokens, key):
        extra = sites - tokens[key].shape[1]
        return F.pad(tokens[key], (0, 0, 0, extra) if key == "XYZ" else (0, extra))

    out = {key: torch.cat([padded(first, key), padded(second, key)]) for key in ("W", "A", "XYZ")}
    out["G"] = torch.cat([first["G"], second["G"]])
    out["L"] = torch.cat([first["L"], second["L"]])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_sample_their_own_crystals_and_update_as_one_process_on_the_union(tmp_path):
    out = tmp_path / "two"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "tests.test_distributed_sampling",
        str(out),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    for rank in ranks:
        assert len(rank["rollouts"]) == 2  # two sampled batches
        for rollout, scored in zip(rank["rollouts"], rank["scored"]):
            assert rollout["G"].tolist() == [SPACE_GROUP] * PER_RANK
            # Each rank scored exactly the crystals it sampled itself.
            assert scored["A"] == rollout["A"].tolist()
    for first, second in zip(ranks[0]["rollouts"], ranks[1]["rollouts"]):
        # Same prompts, different seeds: no crystal of one rank is a crystal of the other.
        assert torch.cdist(first["L"].double(), second["L"].double()).min() > 1e-6

    # Lockstep: both ranks end on the same parameters and baseline.
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(value, ranks[1]["params"][name], rtol=0, atol=1e-7, msg=name)
    assert ranks[0]["ema_baseline"] == ranks[1]["ema_baseline"]

    # One process on the union of the two ranks' rollouts makes the same updates.
    batches = iter([union(a, b) for a, b in zip(ranks[0]["rollouts"], ranks[1]["rollouts"])])

    def replay(model, inputs):
        tokens = next(batches)
        assert len(inputs) == tokens["G"].shape[0] == 2 * PER_RANK
        return tokens

    single = CrystalRLOOTrainer(
        tiny_model(),
        anion_fraction,
        args=rl_config(str(tmp_path / "one"), 2 * PER_RANK),
        train_dataset=prompts(),
        rollout_fn=replay,
    )
    single.train()
    one = dict(single.accelerator.unwrap_model(single.model).named_parameters())
    initial = dict(tiny_model().named_parameters())
    changed = max((one[k].detach() - initial[k].detach()).abs().max().item() for k in one)
    assert changed > 1e-4  # the update is not trivially zero
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(one[name].detach(), value, rtol=1e-4, atol=1e-5, msg=name)
    assert abs(single.ema_baseline - ranks[0]["ema_baseline"]) < 1e-5


def _run_rank(output_dir: str) -> None:
    record: list = []
    trainer = RecordingTrainer(
        tiny_model(), recording_reward(record), args=rl_config(output_dir, PER_RANK), train_dataset=prompts()
    )
    trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    torch.save(
        {
            "world_size": trainer.accelerator.num_processes,
            "rollouts": trainer.rollouts,
            "scored": record,
            "params": {k: v.detach().clone() for k, v in policy.named_parameters()},
            "ema_baseline": trainer.ema_baseline,
        },
        f"{output_dir}/rank{trainer.accelerator.process_index}.pt",
    )
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _run_rank(sys.argv[1])
    # As tests.helpers.rl_toy: a gloo worker thread can abort a rank in C++ static destructors at exit, after the
    # work is saved; skip them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
