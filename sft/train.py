"""Fine-tune a GLM-family model: ``python -m sft.train --train_file ... [flags]``.

The steps: read flags, load base model and tokenizer, encode the data, prepare the method
(P-Tuning v2: a frozen base with a trainable prefix), train with transformers' Trainer,
save the final checkpoint and a training report.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import transformers
from transformers import HfArgumentParser, PreTrainedModel, set_seed

from ptuning.encoder import PrefixConfig
from ptuning.injection import attach_prefix
from ptuning.layout import kv_layout
from sft.arguments import ModelArguments, PtuningArguments, SFTTrainingArguments
from sft.checkpoint import CheckpointError, CheckpointInfo, build_ptuning
from sft.data import DataArguments, DataCollator, DataError, build_dataset
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
from sft.trainer import GenerationEval, NonFiniteLossError, SaveAtEndCallback, SFTTrainer, write_training_report

logger = logging.getLogger("sft.train")

# Mistakes in what the user gave us: one line, no traceback. Anything else is our bug and keeps its traceback.
USER_ERRORS = (DataError, CheckpointError, ModelLoadError, NonFiniteLossError)


def parse_args(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataArguments, PtuningArguments, SFTTrainingArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(training_args: SFTTrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout)
    transformers.utils.logging.set_verbosity_warning()
    if not training_args.should_log:
        logging.getLogger().setLevel(logging.WARNING)


def log_parameters(model: PreTrainedModel) -> None:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d of %d (%.4f%%)", trainable, total, 100 * trainable / total)


def resolve_settings(model_args: ModelArguments, data_args: DataArguments, base: Path) -> tuple[str, str]:
    """The mask and template actually used: ``auto`` means what the base model was built for."""
    defaults = base_defaults(base)
    mask = defaults["mask"] if model_args.mask == "auto" else model_args.mask
    template = defaults["template"] if data_args.template == "auto" else data_args.template
    return mask, template


def make_checkpoint_info(model_args, data_args, ptuning_config, base: Path, base_fp: str, mask, template, dtype):
    data = {k: getattr(data_args, k) for k in ("format", "prompt_column", "response_column", "history_column",
                                                "max_source_length", "max_target_length", "train_on")}
    return CheckpointInfo(
        method=model_args.finetuning_type,
        base_model=portable_name(base),
        base_fingerprint=base_fp,
        template=template,
        mask=mask,
        dtype=str(dtype).removeprefix("torch."),
        data=data,
        ptuning=ptuning_config.to_dict() if ptuning_config else None,
    )


def evaluate_base_loss(model, training_args, collator, eval_dataset, mask: str) -> float:
    """Dev loss of the base model as it is, with the run's mask and no prefix."""
    hook = attach_prefix(model, None, mask)
    trainer = transformers.Trainer(model=model, args=training_args, data_collator=collator, eval_dataset=eval_dataset)
    loss = trainer.evaluate(metric_key_prefix="base")["base_loss"]
    hook.remove()
    logger.info("base model dev loss without prefix: %.4f", loss)
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


def run(model_args, data_args, ptuning_args, training_args) -> tuple[SFTTrainer, dict]:
    """Train as the arguments say; returns the trainer (its model is the trained model) and the metrics."""
    set_seed(training_args.seed)
    base = resolve_model_path(model_args.model_name_or_path)
    mask, template = resolve_settings(model_args, data_args, base)
    data_args.template = template
    dtype = resolve_dtype(model_args.dtype)
    tokenizer = load_tokenizer(base)
    train_dataset = build_dataset(data_args.train_file, tokenizer, data_args, split="train")
    eval_dataset = build_dataset(data_args.validation_file, tokenizer, data_args, split="eval") if data_args.validation_file else None
    model = load_base_model(base, dtype, model_args.attn_implementation)
    base_fp = fingerprint(model)
    collator = DataCollator(pad_token_id=tokenizer.pad_token_id, padding_side="right",
                            pad_to_multiple_of=data_args.pad_to_multiple_of)
    results = {}
    if training_args.eval_base_loss and eval_dataset is not None:
        results["base_dev_loss"] = evaluate_base_loss(model, training_args, collator, eval_dataset, mask)
    prefix_config = PrefixConfig(
        pre_seq_len=ptuning_args.pre_seq_len,
        layout=kv_layout(model.config),
        prefix_projection=ptuning_args.prefix_projection,
        prefix_hidden_size=ptuning_args.prefix_hidden_size,
        dropout=ptuning_args.prefix_dropout,
        mask=mask,
    )
    build_ptuning(model, prefix_config)
    log_parameters(model)
    info = make_checkpoint_info(model_args, data_args, prefix_config, base, base_fp, mask, template, dtype)
    trainer = SFTTrainer(
        generation_eval=generation_eval(training_args, data_args, tokenizer, eval_dataset),
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        checkpoint_info=info,
        callbacks=[SaveAtEndCallback()],
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    results.update(train_result.metrics)
    if eval_dataset is not None:
        results.update(trainer.evaluate())
    trainer.log(results)
    write_training_report(trainer.state.log_history, training_args.output_dir)
    logger.info("saved checkpoint, train_metrics.json and loss_curve.png to %s", training_args.output_dir)
    return trainer, results


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, ptuning_args, training_args = parse_args(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_logging(training_args)
    try:
        run(model_args, data_args, ptuning_args, training_args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, NonFiniteLossError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
