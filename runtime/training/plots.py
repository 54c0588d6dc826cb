"""Loss-curve plot of a training run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from runtime.plots import pyplot, save


def plot_losses(log_history: list[dict], path: str | Path, title: str = "") -> Path:
    """Training loss per step and validation loss per evaluation, as a PNG."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    validation = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    figure, axes = pyplot().subplots(figsize=(6.4, 4))
    if train:
        axes.plot(*zip(*train), label="training loss", color="tab:blue")
    if validation:
        axes.plot(*zip(*validation), "o-", label="validation loss", color="tab:orange")
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("cross-entropy on the character's replies")
    axes.set_title(title or "Training loss")
    axes.grid(alpha=0.3)
    if train or validation:
        axes.legend()
    return save(figure, path, dpi=100)
