"""Held-out NLL against training minutes: the shipped xs model's phases next to a longer probe of another size.

    python scripts/train_default_model.py --work runs/default_model_s --candidates s --sweep-minutes 80 \
        --main-minutes 0 --output runs/model-s
    python scripts/plot_size_probe.py --probe runs/default_model_s/result.json \
        --probe-history runs/default_model_s/log_history.json

Minutes are placed by step within each phase (each phase's steps run at a steady rate), from the phases'
recorded wall-clock minutes. Writes the figure and a small JSON of the probe next to the shipped model's record.
"""

import argparse
import json
from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def shipped_curve(record: dict) -> tuple[list[float], list[float]]:
    """(minutes, eval NLL) of the previous shipped model, phase after phase
    (``docs/results/previous_default_model_training.json``)."""
    minutes, losses, offset = [], [], 0.0
    for phase in ("sweep", "main", "continue"):
        if phase not in record["steps"]:
            continue
        steps, span = record["steps"][phase], record["training_minutes"][phase]
        seen = set()
        for row in record["eval_history"]:
            if row["phase"] == phase and row["step"] not in seen:
                seen.add(row["step"])
                minutes.append(offset + span * row["step"] / steps)
                losses.append(row["eval_loss"])
        offset += span
    return minutes, losses


def probe_curve(result: dict, history: dict) -> tuple[list[float], list[float]]:
    """(minutes, eval NLL) of a one-schedule probe (``--main-minutes 0``)."""
    steps, span = result["steps"]["sweep"], result["training_minutes"]["sweep"]
    rows = {row["step"]: row["eval_loss"] for row in history["sweep"] if "eval_loss" in row}
    return [span * s / steps for s in sorted(rows)], [rows[s] for s in sorted(rows)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shipped", default="docs/results/previous_default_model_training.json")
    parser.add_argument("--probe", required=True, help="result.json of the probe's --work folder")
    parser.add_argument("--probe-history", required=True, help="log_history.json of the probe's --work folder")
    parser.add_argument("--output", default="docs/figures/size_probe.png")
    parser.add_argument("--record", default="docs/default_model_size_probe.json")
    args = parser.parse_args()

    shipped = json.loads(Path(args.shipped).read_text())
    result = json.loads(Path(args.probe).read_text())
    history = json.loads(Path(args.probe_history).read_text())
    xs_m, xs_l = shipped_curve(shipped)
    p_m, p_l = probe_curve(result, history)
    probe_name = result["best"]

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(xs_m, xs_l, "o-", ms=3, label=f"{shipped['best']} ({shipped['parameters']:,} params, shipped: 3 phases)")
    ax.plot(p_m, p_l, "s-", ms=3, label=f"{probe_name} ({result['parameters']:,} params, one cosine schedule)")
    for m, l, color in ((xs_m[-1], xs_l[-1], "C0"), (p_m[-1], p_l[-1], "C1")):
        ax.annotate(f"{l:.2f}", (m, l), textcoords="offset points", xytext=(4, 6), color=color)
    ax.set_ylim(min(xs_l + p_l) - 1, 42)
    ax.set_xlabel("training minutes (2 CPU cores, alone)")
    ax.set_ylabel("held-out NLL per crystal (nats)")
    ax.set_title("Same minutes, bigger model: the small one still wins here")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=130)

    record = {k: result[k] for k in ("best", "parameters", "batch", "lr", "steps", "epochs", "validation")}
    record["config"] = result["sweep"][probe_name]["config"]
    record["training_minutes"] = result["training_minutes"]["sweep"]
    record["eval_history"] = [{"minutes": round(m, 2), "eval_loss": l} for m, l in zip(p_m, p_l)]
    Path(args.record).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({"shipped_final": xs_l[-1], "probe_final": p_l[-1], "figure": args.output}))


if __name__ == "__main__":
    main()
