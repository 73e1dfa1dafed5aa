"""Figures of a training run, in the package's one plotting style (:mod:`crystalformer_rl.plotting`): the NLL
curves of pretraining and SFT, and reward, KL and the in-run rates against the RL step (the paper's Fig. 2)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..plotting import figure, save_figure


NLL_TERMS = ("loss_w", "loss_a", "loss_xyz", "loss_l")

RL_FRACTIONS = {
    "scorable_fraction": "scorable",
    "valid_fraction": "valid",
    "unique_fraction": "unique",
    "single_element_fraction": "single element",
    "rewards/ehull/stable_fraction": "stable",
    "ehull_sun/stable_fraction": "stable",
    "ehull_sun/sun_fraction": "S.U.N. (in-run)",
    "novelty/duplicate_fraction": "duplicate of earlier",
}


def plot_loss_curves(log_history: list[dict], path: str | os.PathLike) -> Path:
    """Training and validation NLL, in total and per term (W, A, XYZ, L), against the step."""
    fig, axes = figure((20, 3.6), ncols=5)
    for ax, key in zip(axes, ("loss", *NLL_TERMS)):
        logged = key if key == "loss" else f"train_{key}"
        train = [(h["step"], h[logged]) for h in log_history if logged in h]
        valid = [(h["step"], h[f"eval_{key}"]) for h in log_history if f"eval_{key}" in h]
        if train:
            steps, values = np.array(train, dtype=float).T
            ax.plot(steps, values, color="C0", alpha=0.25, lw=0.5, label="train (each log)")
            window = len(values) // 50  # length-grouped batches swing the per-batch NLL: show its trend too
            if window > 1:
                trend = np.convolve(values, np.ones(window) / window, mode="valid")
                ax.plot(steps[window - 1 :], trend, color="C0", label=f"train (mean of {window} logs)")
        if valid:
            ax.plot(*zip(*valid), "o-", color="C1", label="validation")
        ax.set_title(key.replace("loss", "NLL"))
        ax.set_xlabel("step")
        if train or valid:
            ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def plot_rl_curves(log_history: list[dict], path: str | os.PathLike) -> Path:
    """Mean reward (± its spread, the shaped reward and the baseline), KL to the base model, and the in-run
    fractions (scorable, valid, unique, stable, S.U.N., ...) against the optimizer step."""
    rows = [h for h in log_history if "reward" in h]
    steps = [h["step"] for h in rows]
    fig, axes = figure((13, 3.6), ncols=3)
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
    for key, label in RL_FRACTIONS.items():
        if any(key in h for h in rows):
            axes[2].plot(steps, [h.get(key, float("nan")) for h in rows], label=label)
    axes[2].set_ylabel("fraction")
    if axes[2].lines:
        axes[2].legend()
    for ax in axes:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
