"""The model to generate with: a fine-tuning checkpoint, a plain model directory or ``embedded``."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sft.checkpoint import CheckpointInfo, load_for_inference
from sft.data import DataArguments
from sft.eval.arguments import DEFAULT_CHECKPOINT, LoadArguments
from sft.models import EMBEDDED, ModelLoadError

logger = logging.getLogger(__name__)


def load_model(args: LoadArguments) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, CheckpointInfo]:
    """Model, tokenizer and checkpoint description, ready for ``generate()``.

    Raises:
        CheckpointError, ModelLoadError: the directory is missing, incomplete or does not
            match the flags (one-line messages).
    """
    source = args.source()
    if source != EMBEDDED and not Path(source).is_dir():
        flag = "--checkpoint" if args.checkpoint else "--model_name_or_path"
        hint = " (bash scripts/train.sh writes it)" if Path(source) == Path(DEFAULT_CHECKPOINT) else ""
        raise ModelLoadError(f"{flag}: expected a checkpoint or model directory, found no {source}{hint}")
    base_override = args.model_name_or_path if args.checkpoint else None
    expect = {"pre_seq_len": args.pre_seq_len, "template": args.template, "mask": args.mask}
    model, tokenizer, info = load_for_inference(
        source, model_name_or_path=base_override, dtype=args.dtype, expect=expect
    )
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model.to(device)  # the prefix encoder is a submodule: it moves too
    logger.info(
        "generating with %s on %s (method %s, template %s, mask %s)", source, device, info.method, info.template, info.mask
    )
    return model, tokenizer, info


def checkpoint_data_arguments(info: CheckpointInfo, **overrides) -> DataArguments:
    """The data settings a checkpoint was trained with (``DataArguments`` defaults for a plain model).

    ``overrides`` that are ``None`` are ignored, so unset command-line flags keep the checkpoint's.
    """
    known = {f.name for f in fields(DataArguments)}
    settings = {k: v for k, v in info.data.items() if k in known}
    settings.update(template=info.template, train_file=None, validation_file=None)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return DataArguments(**settings)
