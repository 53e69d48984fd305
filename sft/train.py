"""Fine-tune a GLM-family model: ``python -m sft.train --train_file ... [flags]``.

The steps: read flags, load base model and tokenizer, encode the data, prepare the method
(``--finetuning_type``: ``ptuning``, a frozen base with a trainable prefix; ``lora``, a frozen
base with peft adapters; ``full``, every weight), train with transformers' Trainer, save the
final checkpoint and a training report. Everything but the method preparation is shared.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import HfArgumentParser, PreTrainedModel, set_seed

from ptuning.encoder import PrefixConfig
from ptuning.injection import attach_prefix
from ptuning.layout import kv_layout
from sft.arguments import LoraArguments, ModelArguments, PtuningArguments, SFTTrainingArguments
from sft.checkpoint import CheckpointError, CheckpointInfo
from sft.data import DataArguments, DataCollator, DataError, EncodedDataset, build_dataset
from sft.models import (
    ModelLoadError,
    base_defaults,
    fingerprint,
    load_base_model,
    load_tokenizer,
    portable_name,
    resolve_dtype,
    resolve_model_path,
)
from sft.generation import GenerationArguments
from sft.methods import MethodError, build_full, build_lora, build_ptuning, lora_target_modules
from sft.trainer import GenerationEval, NonFiniteLossError, SaveAtEndCallback, SFTTrainer, write_training_report

logger = logging.getLogger("sft.train")

# Mistakes in what the user gave us: one line, no traceback. Anything else is our bug and keeps its traceback.
USER_ERRORS = (DataError, CheckpointError, ModelLoadError, MethodError, NonFiniteLossError)


def parse_args(argv: list[str] | None = None):
    """``(ModelArguments, DataArguments, PtuningArguments, LoraArguments, SFTTrainingArguments)``."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PtuningArguments, LoraArguments, SFTTrainingArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(training_args: SFTTrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout)
    transformers.utils.logging.set_verbosity_warning()
    if not training_args.should_log:
        logging.getLogger().setLevel(logging.WARNING)


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d of %d (%.4f%%)", trainable, total, 100 * trainable / total)
    return {"trainable_parameters": trainable, "total_parameters": total}


def weights_dtype(model_args: ModelArguments, method: str) -> torch.dtype:
    """``--dtype auto`` keeps fp32 weights for full fine-tuning: AdamW steps smaller than bf16 can
    represent would be lost (``--bf16`` gives mixed precision on top)."""
    if method == "full" and model_args.dtype == "auto":
        return torch.float32
    return resolve_dtype(model_args.dtype)


def resolve_settings(model_args: ModelArguments, data_args: DataArguments, base: Path) -> tuple[str, str]:
    """The mask and template actually used: ``auto`` means what the base model was built for."""
    defaults = base_defaults(base)
    mask = defaults["mask"] if model_args.mask == "auto" else model_args.mask
    template = defaults["template"] if data_args.template == "auto" else data_args.template
    return mask, template


def prepare_method(model: PreTrainedModel, method: str, ptuning_args, lora_args, mask: str) -> tuple[nn.Module, dict]:
    """Make ``model`` train as ``method`` says; returns the model to train and the checkpoint's method section."""
    if method == "ptuning":
        config = PrefixConfig(
            pre_seq_len=ptuning_args.pre_seq_len,
            layout=kv_layout(model.config),
            prefix_projection=ptuning_args.prefix_projection,
            prefix_hidden_size=ptuning_args.prefix_hidden_size,
            dropout=ptuning_args.prefix_dropout,
            mask=mask,
        )
        build_ptuning(model, config)
        return model, {"ptuning": config.to_dict()}
    if method == "lora":
        section = lora_args.section(lora_target_modules(model, lora_args.lora_target))
        return build_lora(model, section, mask), {"lora": section}
    return build_full(model, mask), {}


def make_checkpoint_info(method: str, section: dict, data_args, base: Path, base_fp: str, mask, template, dtype):
    data = {k: getattr(data_args, k) for k in ("format", "prompt_column", "response_column", "history_column",
                                                "max_source_length", "max_target_length", "train_on")}
    return CheckpointInfo(
        method=method,
        base_model=portable_name(base),
        base_fingerprint=base_fp,
        template=template,
        mask=mask,
        dtype=str(dtype).removeprefix("torch."),
        data=data,
        **section,
    )


def evaluate_base_loss(model, training_args, collator, eval_dataset, mask: str) -> float:
    """Dev loss of the base model as it is (no prefix, no adapters), with the run's mask."""
    hook = attach_prefix(model, None, mask)
    trainer = transformers.Trainer(model=model, args=training_args, data_collator=collator, eval_dataset=eval_dataset)
    loss = trainer.evaluate(metric_key_prefix="base")["base_loss"]
    hook.remove()
    logger.info("base model dev loss before training: %.4f", loss)
    return loss


def generation_eval(training_args, data_args, tokenizer, eval_dataset) -> GenerationEval | None:
    """Scores by generation during training on the first ``--eval_samples`` dev rows, if asked."""
    if not training_args.eval_samples or eval_dataset is None:
        return None
    settings = GenerationArguments(
        max_new_tokens=training_args.eval_max_new_tokens, batch_size=training_args.per_device_eval_batch_size
    )
    examples = eval_dataset.examples[: training_args.eval_samples]
    return GenerationEval(tokenizer, examples, data_args.max_source_length, settings)


def load_datasets(data_args: DataArguments, tokenizer) -> tuple[EncodedDataset, EncodedDataset | None]:
    train_dataset = build_dataset(data_args.train_file, tokenizer, data_args, split="train")
    if not data_args.validation_file:
        return train_dataset, None
    return train_dataset, build_dataset(data_args.validation_file, tokenizer, data_args, split="eval")


def train_and_report(trainer: SFTTrainer, training_args: SFTTrainingArguments, results: dict) -> dict:
    """Train, save the final checkpoint, evaluate, and write the report; returns every metric."""
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    results.update(train_result.metrics)
    results.update(trainer.resource_metrics(train_result.metrics["train_runtime"]))
    if trainer.eval_dataset is not None:
        results.update(trainer.evaluate())
    trainer.log(results)
    write_training_report(trainer.state.log_history, training_args.output_dir)
    logger.info("saved checkpoint, train_metrics.json and loss_curve.png to %s", training_args.output_dir)
    return results


def run(model_args, data_args, ptuning_args, lora_args, training_args) -> tuple[SFTTrainer, dict]:
    """Train as the arguments say; returns the trainer (its model is the trained model) and the metrics."""
    set_seed(training_args.seed)
    method = training_args.finetuning_type
    base = resolve_model_path(model_args.model_name_or_path)
    mask, template = resolve_settings(model_args, data_args, base)
    data_args.template = template
    tokenizer = load_tokenizer(base)
    train_dataset, eval_dataset = load_datasets(data_args, tokenizer)
    dtype = weights_dtype(model_args, method)
    model = load_base_model(base, dtype, model_args.attn_implementation)
    base_fp = fingerprint(model)
    collator = DataCollator(pad_token_id=tokenizer.pad_token_id, padding_side="right",
                            pad_to_multiple_of=data_args.pad_to_multiple_of)
    results = {}
    if training_args.eval_base_loss and eval_dataset is not None:
        results["base_dev_loss"] = evaluate_base_loss(model, training_args, collator, eval_dataset, mask)
    model, section = prepare_method(model, method, ptuning_args, lora_args, mask)
    results.update(count_parameters(model))
    trainer = SFTTrainer(
        generation_eval=generation_eval(training_args, data_args, tokenizer, eval_dataset),
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        tokenizer=tokenizer,
        checkpoint_info=make_checkpoint_info(method, section, data_args, base, base_fp, mask, template, dtype),
        callbacks=[SaveAtEndCallback()],
    )
    return trainer, train_and_report(trainer, training_args, results)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_logging(args[-1])
    try:
        run(*args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, NonFiniteLossError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
