"""Reward and KL against the RL step (the paper's Fig. 2)."""

from __future__ import annotations

import os


def plot_rl_curves(log_history: list[dict], path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in log_history if "reward" in h]
    steps = [h["step"] for h in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    reward = [h["reward"] for h in rows]
    std = [h.get("reward_std", 0.0) for h in rows]
    axes[0].plot(steps, reward, label="mean reward")
    axes[0].fill_between(steps, [r - s for r, s in zip(reward, std)], [r + s for r, s in zip(reward, std)], alpha=0.2)
    if any("reward_shaped" in h for h in rows):  # the baseline tracks reward − τ·KL, not the reward
        axes[0].plot(steps, [h.get("reward_shaped", float("nan")) for h in rows], ":", label="reward − τ·KL")
    axes[0].plot(steps, [h.get("baseline", float("nan")) for h in rows], "--", label="baseline")
    axes[0].set_ylabel("reward")
    axes[0].legend()
    axes[1].plot(steps, [h["kl"] for h in rows])
    axes[1].set_ylabel("KL(pθ ‖ p_base) per crystal")
    fractions = {
        "scorable_fraction": "scorable",
        "valid_fraction": "valid",
        "unique_fraction": "unique",
        "single_element_fraction": "single element",
        "rewards/ehull/stable_fraction": "stable",
        "ehull_sun/stable_fraction": "stable",
        "ehull_sun/sun_fraction": "S.U.N. (in-run)",
        "novelty/duplicate_fraction": "duplicate of earlier",
    }
    for key, label in fractions.items():
        if any(key in h for h in rows):
            axes[2].plot(steps, [h.get(key, float("nan")) for h in rows], label=label)
    axes[2].set_ylabel("fraction")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
