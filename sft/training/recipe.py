"""The fine-tuning recipe behind ``python -m sft.train``: flags in, a checkpoint and a report out.

The steps: read flags, load base model and tokenizer, encode the data, prepare the method
(:mod:`sft.methods`: ``ptuning``, a frozen base with a trainable prefix; ``lora``, a frozen base
with peft adapters; ``full``, every weight), train with transformers' Trainer, save the final
checkpoint and a training report. Everything but the method preparation is shared.

The same recipe runs in every process of ``torchrun`` (``NPROC=N bash scripts/train.sh``): DDP by
default, FSDP with ``--fsdp`` (full and LoRA), DeepSpeed with ``--deepspeed``. Why the numbers are
those of one process with the same global batch is argued in :mod:`sft.training.trainer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import HfArgumentParser, PreTrainedModel, TrainerCallback, set_seed

from ptuning.injection import attach_prefix
from sft.checkpoint import CheckpointInfo
from sft.data import DataArguments, DataCollator, EncodedDataset, build_dataset
from sft.data.encoding import PackingCollator
from sft.eval.arguments import GenerationArguments
from sft.methods import METHODS, Method, get_method
from sft.models import (base_defaults, cpu_computes_bf16, fingerprint, load_base_model, load_tokenizer, resolve_dtype,
                        resolve_model_path)
from sft.training.arguments import MethodArguments, ModelArguments
from sft.training.heap import keep_freed_memory
from sft.training.report import batch_layout, count_parameters, write_training_report
from sft.training.trainer import GenerationEval, MaskedLossTrainer, SaveAtEndCallback, SFTTrainer, SFTTrainingArguments

logger = logging.getLogger("sft.train")

# What the checkpoint records of the data settings, so evaluation renders prompts exactly as training did.
RECORDED_DATA = ("format", "prompt_column", "response_column", "history_column", "max_source_length",
                 "max_target_length", "train_on")


@dataclass
class TrainArguments:
    """Every flag of a run, parsed."""

    model: ModelArguments
    data: DataArguments
    method: MethodArguments
    method_flags: dict  # each registered method's own flags' dataclass, by method name
    training: SFTTrainingArguments

    @property
    def chosen(self) -> Method:
        return get_method(self.method.finetuning_type)


def parse_args(argv: list[str] | None = None) -> TrainArguments:
    """Our flags first, then transformers' ``TrainingArguments`` with defaults that follow the method."""
    own = [ModelArguments, DataArguments, MethodArguments]
    method_types = [m.arguments for m in METHODS.values() if m.arguments is not None]
    *parsed, rest = HfArgumentParser([*own, *method_types]).parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    model_args, data_args, method_args, *flags = parsed
    method = get_method(method_args.finetuning_type)
    trainer_parser = HfArgumentParser(SFTTrainingArguments)
    trainer_parser.set_defaults(output_dir=f"output/{method.name}", learning_rate=method.default_learning_rate)
    (training_args,) = trainer_parser.parse_args_into_dataclasses(args=rest)
    if method.name == "ptuning" and training_args.zero_stage() == 3:
        # ZeRO-3 partitions the prefix encoder too, and prefix.safetensors would be saved from empty shards.
        raise ValueError("--deepspeed: expected ZeRO stage 0-2 for --finetuning_type ptuning (its few MB need "
                         "no partitioning), found stage 3")
    if training_args.fsdp:
        check_fsdp(method, training_args)
    if method.name == "ptuning" and training_args.ddp_find_unused_parameters is None:
        # Every layer's prefix enters every forward (the hook checks it), so DDP has no unused parameter to
        # look for. transformers' default (True) traverses the autograd graph after every forward and has
        # torch warn that it found none, on every run (the time it takes is lost in the noise on 2 CPUs).
        training_args.ddp_find_unused_parameters = False
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:  # joins torchrun's process group
        raise ValueError(f"torchrun: expected its {launched} processes to train as one (DDP), found a world size of "
                         f"{training_args.world_size}: each process would train alone")
    by_name = {m.name: next((f for f in flags if type(f) is m.arguments), None) for m in METHODS.values() if m.arguments}
    return TrainArguments(model_args, data_args, method_args, by_name, training_args)


def check_fsdp(method: Method, training_args: SFTTrainingArguments) -> None:
    """``--fsdp`` where it shards: several processes on GPUs (or other accelerators), full or LoRA."""
    if method.name == "ptuning":
        # FSDP shards the prefix encoder like ZeRO-3 does, and the prefix is saved from the module's weights.
        raise ValueError("--fsdp: expected --finetuning_type full or lora (P-tuning's few MB need no sharding: "
                         "run it without --fsdp, as DDP), found ptuning")
    device, world = training_args.device.type, training_args.world_size  # joins torchrun's process group
    if device == "cpu" or world == 1:
        # accelerate (1.15) enables FSDP only on accelerators: on CPU it would train as DDP without a word.
        raise ValueError(f"--fsdp: expected several processes on GPUs (torchrun, NPROC>1), found {world} "
                         f"process(es) on {device}; drop --fsdp (on CPU, several processes train as DDP)")


def weights_dtype(model_args: ModelArguments, method: Method, training_args: SFTTrainingArguments) -> torch.dtype:
    """``--dtype auto``: bf16 on a GPU that supports it, and for a frozen base (P-tuning, LoRA) on a CPU that
    computes bf16 natively (:func:`sft.models.cpu_computes_bf16`: the bench's P-tuning step 1.5x faster than
    in fp32), else fp32. Full fine-tuning keeps fp32 weights: AdamW steps smaller than bf16 can represent would
    be lost (``--bf16`` gives mixed precision on top)."""
    if model_args.dtype == "auto":
        if method.name == "full":
            return torch.float32
        if training_args.device.type == "cpu" and cpu_computes_bf16():
            logger.info("base weights: bf16 (--dtype auto, this CPU has AMX bf16 units; --dtype float32 for fp32)")
            return torch.bfloat16
    return resolve_dtype(model_args.dtype)


def resolve_settings(model_args: ModelArguments, data_args: DataArguments, base: Path) -> tuple[str, str]:
    """The mask and template actually used: ``auto`` means what the base model was built for."""
    defaults = base_defaults(base)
    mask = defaults["mask"] if model_args.mask == "auto" else model_args.mask
    template = defaults["template"] if data_args.template == "auto" else data_args.template
    return mask, template


def evaluate_base_loss(model, training_args, collator, eval_dataset, mask: str) -> float:
    """Dev loss of the base model as it is (no prefix, no adapters), with the run's mask."""
    hook = attach_prefix(model, None, mask)
    trainer = MaskedLossTrainer(model=model, args=training_args, data_collator=collator, eval_dataset=eval_dataset)
    loss = trainer.evaluate(metric_key_prefix="base")["base_loss"]
    hook.remove()
    # accelerate marks a model it has prepared, for evaluation too, and never wraps a marked model again:
    # the training Trainer would leave it out of DDP and every process would train alone
    # (SFTTrainer.training_step refuses that).
    model.__dict__.pop("_is_accelerate_prepared", None)
    logger.info("base model dev loss before training: %.4f", loss)
    return loss


def generation_eval(args: TrainArguments, tokenizer, eval_dataset) -> GenerationEval | None:
    """Scores by generation during training on the first ``--eval_samples`` dev rows, if asked."""
    if not args.method.eval_samples or eval_dataset is None:
        return None
    settings = GenerationArguments(
        max_new_tokens=args.method.eval_max_new_tokens, batch_size=args.training.per_device_eval_batch_size
    )
    examples = eval_dataset.examples[: args.method.eval_samples]
    return GenerationEval(tokenizer, examples, args.data.max_source_length, settings)


def load_datasets(data_args: DataArguments, tokenizer, copies: bool = False) -> tuple[EncodedDataset,
                                                                                      EncodedDataset | None]:
    """The training rows (with their ``copies`` marks when ``copies``) and the validation rows, if any."""
    train_dataset = build_dataset(data_args.train_file, tokenizer, data_args, split="train", copies=copies)
    if not data_args.validation_file:
        return train_dataset, None
    return train_dataset, build_dataset(data_args.validation_file, tokenizer, data_args, split="eval")


def train_and_report(trainer: SFTTrainer, training_args: SFTTrainingArguments, results: dict) -> dict:
    """Train, save the final checkpoint, evaluate, and write the report (process 0); returns every metric."""
    results.update(batch_layout(training_args))
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    results.update(train_result.metrics)
    results.update(trainer.resource_metrics(train_result.metrics["train_runtime"]))
    if trainer.eval_dataset is not None:
        results.update(trainer.evaluate())
    trainer.log(results)
    if trainer.is_world_process_zero():
        weight = training_args.copy_loss_weight
        label = "train loss" if weight == 1 else f"train loss, copies weigh {weight:g}"
        write_training_report(trainer.state.log_history, training_args.output_dir, label)
        logger.info("saved checkpoint, train_metrics.json and loss_curve.png to %s", training_args.output_dir)
    return results


def prepare(model: PreTrainedModel, args: TrainArguments, mask: str,
            train_rows: Sequence[dict]) -> tuple[torch.nn.Module, dict | None]:
    """The model to train as the chosen method says, and the method's checkpoint section."""
    method = args.chosen
    flags = args.method_flags.get(method.name)
    settings = method.settings(model, flags, mask)
    return method.prepare_to_train(model, settings, mask, flags, train_rows), settings


SHAPE_MULTIPLE = 64  # packed bf16 batches on CPU end at a multiple of this many tokens (PackingCollator)


def shape_multiple(training_args: SFTTrainingArguments, model: PreTrainedModel) -> int | None:
    """What packed sequences are filled up to a multiple of: :data:`SHAPE_MULTIPLE` for bf16 or fp16 weights on
    CPU, whose matrix products oneDNN runs, building a kernel for each new shape (see
    :class:`~sft.data.encoding.PackingCollator`; on average 32 filler tokens a batch, which attend only to
    themselves); else ``None`` (MKL's fp32 and the GPU's kernels take any shape)."""
    low = model.dtype in (torch.bfloat16, torch.float16) or training_args.bf16 or training_args.fp16  # or autocast
    if training_args.device.type == "cpu" and low:
        return SHAPE_MULTIPLE
    return None


def packing_collator(training_args: SFTTrainingArguments, model: PreTrainedModel,
                     pad_token_id: int | None) -> PackingCollator | None:
    """The collator of packed training batches, or ``None`` where batches are padded (``--packing false``, or
    DeepSeek sparse attention, whose indexer would pick keys across the rows of a packed sequence)."""
    if not training_args.packing:
        return None
    if getattr(model.config.get_text_config(), "index_topk", None) is not None:
        logger.info("packing: off for %s (sparse attention selects keys across rows); batches are padded",
                    model.config.model_type)
        return None
    multiple = shape_multiple(training_args, model)
    logger.info("packing: each training batch's rows concatenated into one sequence, no padding%s "
                "(--packing false: off)", f" (filled to a multiple of {multiple} tokens)" if multiple else "")
    return PackingCollator(pad_to_multiple_of=multiple, pad_token_id=pad_token_id or 0)


def run(args: TrainArguments, callbacks: Sequence[TrainerCallback] = ()) -> tuple[SFTTrainer, dict]:
    """Train as the arguments say; returns the trainer (its model is the trained model) and the metrics.

    ``callbacks`` are further Trainer callbacks (``bench/train_throughput.py`` times the steps with one).
    """
    set_seed(args.training.seed)
    if args.training.keep_freed_memory and args.training.device.type == "cpu" and keep_freed_memory():
        logger.info("memory: freed buffers stay in the process for the next step (--keep_freed_memory false: off)")
    method = args.chosen
    base = resolve_model_path(args.model.model_name_or_path)
    mask, template = resolve_settings(args.model, args.data, base)
    args.data.template = template
    tokenizer = load_tokenizer(base)
    train_dataset, eval_dataset = load_datasets(args.data, tokenizer, copies=args.training.copy_loss_weight != 1)
    dtype = weights_dtype(args.model, method, args.training)
    model = load_base_model(base, dtype, args.model.attn_implementation)
    base_fp = fingerprint(model)
    collator = DataCollator(pad_token_id=tokenizer.pad_token_id, padding_side="right",
                            pad_to_multiple_of=args.data.pad_to_multiple_of)
    train_collator = packing_collator(args.training, model, tokenizer.pad_token_id)
    results = {}
    if args.method.eval_base_loss and eval_dataset is not None:
        results["base_dev_loss"] = evaluate_base_loss(model, args.training, collator, eval_dataset, mask)
    set_seed(args.training.seed)  # the same initial weights with or without the base evaluation before
    model, settings = prepare(model, args, mask, train_dataset.rows)
    results.update(count_parameters(model))
    info = CheckpointInfo.describe(method.name, settings, base=base, base_fingerprint=base_fp, mask=mask,
                                   template=template, dtype=dtype,
                                   data={k: getattr(args.data, k) for k in RECORDED_DATA})
    trainer = SFTTrainer(
        generation_eval=generation_eval(args, tokenizer, eval_dataset),
        model=model,
        args=args.training,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        train_data_collator=train_collator,
        tokenizer=tokenizer,
        checkpoint_info=info,
        callbacks=[SaveAtEndCallback(), *callbacks],
    )
    return trainer, train_and_report(trainer, args.training, results)
