"""What a training run reports: trainable parameters and the batch layout in the log, every logged value and
a loss curve on disk."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

logger = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters, logged and returned."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d of %d (%.4f%%)", trainable, total, 100 * trainable / total)
    return {"trainable_parameters": trainable, "total_parameters": total}


def batch_layout(training_args) -> dict[str, int]:
    """How many rows one optimizer step trains on, and how the processes share them; logged and returned.

    The global batch (processes x per-device batch x accumulation steps) is what decides the
    numbers: two processes of 4 rows train as one process of 8 (:mod:`sft.training.trainer`).
    """
    world, per_device = training_args.world_size, training_args.per_device_train_batch_size
    accumulation = training_args.gradient_accumulation_steps
    layout = {"world_size": world, "per_device_train_batch_size": per_device,
              "gradient_accumulation_steps": accumulation, "global_batch_size": world * per_device * accumulation}
    logger.info("world size %d, per-device batch %d, gradient accumulation %d: global batch %d rows per optimizer "
                "step", world, per_device, accumulation, layout["global_batch_size"])
    return layout


def write_training_report(log_history: list[dict], output_dir: str | Path, train_label: str = "train loss") -> None:
    """``train_metrics.json`` (every logged value) and ``loss_curve.png`` into ``output_dir``; ``train_label``
    names the training loss's curve (a weighted loss is not the dev loss's kind)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    (output_dir / "train_metrics.json").write_text(json.dumps(log_history, indent=1), encoding="utf-8")
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    dev = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    for points, label in ((train, train_label), (dev, "dev loss")):
        if points:
            ax.plot(*zip(*points), marker="." if label == "dev loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output_dir / "loss_curve.png", dpi=100)
    plt.close(fig)
