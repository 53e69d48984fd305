"""transformers' Trainer and TrainingArguments, saving what a method trains (as its checkpoint describes)
and refusing non-finite losses.

Several processes (``torchrun``: DDP, FSDP or DeepSpeed through the Trainer's accelerate) give the
numbers of one process with their global batch: the Trainer deals each process consecutive
micro-batches of the one-process order (a batch of 8 is two batches of 4), and with
``average_tokens_across_devices`` (on by default) divides every process's summed token loss by
the label tokens of the whole global batch, so the averaged gradient is the one-process
gradient. Packing stays exact: each process packs its own rows, and a packed batch scores the
(context, token) pairs of its padded rows. What only one process may do (write checkpoints,
reports, logs) is left to process 0; what decides whether to go on (a non-finite loss, the
generation scores behind ``--metric_for_best_model``) is the same in every process.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from ptuning.injection import PROMPT_LABELS_KWARG
from sft.checkpoint import CheckpointInfo, save_checkpoint
from sft.data import Example
from sft.data.encoding import IGNORE_INDEX, unpack
from sft.errors import CheckpointError, UserError
from sft.eval.arguments import GenerationArguments
from sft.eval.evaluation import evaluate_examples
from sft.eval.generation import Shard
from sft.eval.scores import CORPUS_KEYS
from sft.methods import get_method

logger = logging.getLogger(__name__)

NONFINITE_BATCH = "nonfinite_batch.safetensors"


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss; the batch and the last finite weights were saved."""

    exit_status = 1  # not a flag to fix, but the run did not finish


@dataclass
class SFTTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with this project's defaults.

    ``sft.train`` fills ``output_dir`` and ``learning_rate`` from ``--finetuning_type`` when they are
    not given (:func:`sft.training.recipe.parse_args`).
    """

    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep dataset columns (they are all inputs)."})
    packing: bool = field(
        default=True,
        metadata={"help": "Train on packed batches: each batch's rows concatenated into one sequence without padding, "
                          "attention confined to each row. Exact (the same loss and gradients as padded batches) and "
                          "faster; false pads every batch to its longest row. Evaluation always pads (and "
                          "--pad_to_multiple_of applies to padded batches only)."},
    )
    copy_loss_weight: float = field(
        default=1.0,
        metadata={"help": "Weight in the training loss of the answer tokens that repeat a token of the row's "
                          "prompt text (the values of an ADGEN key#value prompt), the other answer tokens weighing 1: "
                          "above 1 it pays the model more to name what its prompt asks for. 1 is the plain causal "
                          "LM loss; the evaluation loss is always plain."},
    )
    keep_freed_memory: bool = field(
        default=True,
        metadata={"help": "On CPU (Linux, glibc): keep the memory a step frees (activations, gradients) in the "
                          "process for the next step, instead of returning it to the system and faulting it in "
                          "again (mallopt: blocks up to 32 MB from the heap, no trimming). Faster steps; the process "
                          "holds its peak memory to the end. false: malloc's own behaviour."},
    )
    include_num_input_tokens_seen: str = field(
        default="non_padding",
        metadata={"help": "Count the tokens trained on, for the report's tokens/s: non_padding (prompt and answer), "
                          "all (padding too) or no.", "choices": ["non_padding", "all", "no"]},
    )

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate: expected a positive number, found {self.learning_rate}")
        if not self.copy_loss_weight > 0:
            raise ValueError(f"--copy_loss_weight: expected a positive number, found {self.copy_loss_weight}")
        if self.copy_loss_weight != 1 and self.label_smoothing_factor:
            raise ValueError("--copy_loss_weight and --label_smoothing_factor: expected at most one of them, found "
                             f"{self.copy_loss_weight} and {self.label_smoothing_factor}")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            # torchrun's processes on a machine without GPUs: transformers (5.24) joins them as DDP over gloo only
            # with use_cpu; without it each process would train alone on its share of the batch.
            self.use_cpu = True
        super().__post_init__()
        if self.activation_checkpointing and not self.activation_checkpointing_kwargs:
            # Non-reentrant checkpointing lets gradients reach the prefix or adapters while the base is frozen.
            self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs = {"use_reentrant": False}

    def zero_stage(self) -> int | None:
        """The ZeRO stage of ``--deepspeed`` (a JSON file or dict), ``None`` without DeepSpeed."""
        config = self.deepspeed
        if isinstance(config, str):
            path = Path(config)
            config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return (config or {}).get("zero_optimization", {}).get("stage")


class MaskedLossTrainer(Trainer):
    """A Trainer that keeps telling the prefix hook where each prompt ends when it computes the loss itself.

    With ``--label_smoothing_factor`` or a ``compute_loss_func``, transformers takes ``labels`` out of the
    inputs before the forward; prefix-LM masking finds each row's prompt from them, and without them a
    padded batch would attend both ways across the whole row (its answer too) and a packed one stop. They
    go to the hook as ``prompt_labels`` (:data:`ptuning.injection.PROMPT_LABELS_KWARG`) then.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" in inputs and (self.label_smoother is not None or self.compute_loss_func is not None):
            inputs = {**inputs, PROMPT_LABELS_KWARG: inputs["labels"]}
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


class SFTTrainer(MaskedLossTrainer):
    """A Trainer whose checkpoints are :func:`sft.checkpoint.save_trained`'s: the prefix, the peft adapter or
    the whole model, as the run's method says, plus ``sft_checkpoint.json``.

    With ``generation_eval`` set, every evaluation also generates answers for those examples
    and reports ROUGE-1/2/L, BLEU-4, attribute recall and distinct share as ``eval_rouge-1`` ...
    (usable as ``--metric_for_best_model rouge-l`` or ``attribute_recall``).

    With ``train_data_collator`` set (:class:`sft.data.encoding.PackingCollator`), training batches
    are made by it and evaluation batches by ``data_collator``. Training steps compute logits only
    where a label is scored (:func:`supervised_logits_only`); evaluation keeps them all.
    """

    def __init__(
        self,
        *args,
        checkpoint_info: CheckpointInfo,
        tokenizer: PreTrainedTokenizerBase | None = None,
        generation_eval: GenerationEval | None = None,
        train_data_collator=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.train_data_collator = train_data_collator
        self.checkpoint_info = checkpoint_info
        # Saved into full checkpoints. Not the Trainer's processing_class: that would rewrite the model
        # config's special token ids to the tokenizer's before training.
        self.checkpoint_tokenizer = tokenizer
        if generation_eval is not None:
            generation_eval = replace(generation_eval, shard=self._generation_shard())
        self.generation_eval = generation_eval

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.generation_eval is not None and eval_dataset is None:
            scores = self.generation_eval(self.model)
            scores = {f"{metric_key_prefix}_{k}": v for k, v in scores.items() if k in CORPUS_KEYS and v is not None}
            self.log(scores)
            metrics.update(scores)
        return metrics

    def _generation_shard(self) -> Shard:
        """Generation split over the processes; not where the weights themselves are split (FSDP, ZeRO-3):
        there every forward is collective, so every process generates every row, in step."""
        if self.is_fsdp_enabled or self.args.zero_stage() == 3:
            return Shard()
        return Shard.current()

    def get_train_dataloader(self):
        if self.train_data_collator is None:
            return super().get_train_dataloader()
        padding, self.data_collator = self.data_collator, self.train_data_collator  # read when the loader is built
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = padding

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.world_size > 1 and model is self.model and not self.is_fsdp_enabled:
            # FSDP2 shards the model in place; DDP and DeepSpeed wrap it. Unwrapped, gradients would not be averaged.
            raise RuntimeError(f"process {self.args.process_index} of {self.args.world_size}: expected the model "
                               f"wrapped for data parallel training, found the bare {type(model).__name__}")
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        copies = inputs.get("copies")
        forward = {key: value for key, value in inputs.items() if key != "copies"}
        if not return_outputs and "labels" in inputs and self.label_smoother is None and self.compute_loss_func is None:
            # training: nobody reads the logits, only the loss
            forward = supervised_logits_only(forward, getattr(self.train_data_collator, "pad_to_multiple_of", None))
            if copies is not None and self.args.copy_loss_weight != 1:
                result = loss = self._copy_weighted_loss(model, forward, copies, num_items_in_batch)
            else:
                result = loss = super().compute_loss(model, forward, num_items_in_batch=num_items_in_batch)
        else:
            result = super().compute_loss(model, forward, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            loss = result[0] if return_outputs else result
        losses = loss.detach().float().reshape(-1)
        if self.args.world_size > 1:
            # Every process stops together: one stopping alone would leave the others waiting in an all-reduce.
            losses = self.accelerator.gather(losses)  # (world,)
        if not torch.isfinite(losses).all():
            self._stop_on_nonfinite(losses, inputs)
        return result

    def _copy_weighted_loss(self, model, forward: dict, copies: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """The Trainer's loss with each token's term weighted: ``--copy_loss_weight`` where ``copies`` marks
        the label, 1 elsewhere.

        The Trainer's loss is the plain sum of the kept tokens' cross-entropies times a factor of its own
        (1 / the global batch's label tokens, times the processes when it averages tokens across them);
        the weighted sum is scaled by the same factor, read off as the plain loss over the plain sum.
        """
        loss, outputs = super().compute_loss(model, forward, return_outputs=True, num_items_in_batch=num_items_in_batch)
        labels = forward["shift_labels"]  # (B, K): what each kept logit predicts
        keep = forward["logits_to_keep"]
        marks = copies[:, 1:].index_select(1, keep)  # (B, K)
        logits = outputs.logits.float()  # (B, K, V)
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none",
                                                   ignore_index=IGNORE_INDEX).view_as(labels)
        weights = torch.where(marks.bool(), self.args.copy_loss_weight, 1.0)
        plain = losses.sum()
        factor = (loss / plain.clamp_min(torch.finfo(plain.dtype).tiny)).detach()  # 0 when nothing is scored
        return factor * (losses * weights).sum()

    def _stop_on_nonfinite(self, losses: torch.Tensor, inputs: dict) -> None:
        out = Path(self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        world = self.args.world_size
        batch_file = NONFINITE_BATCH if world == 1 else f"nonfinite_batch.rank{self.args.process_index}.safetensors"
        # A packed batch is saved as its padded rows, which replay with model(**batch) on any model.
        inputs = unpack(inputs, getattr(self.data_collator, "pad_token_id", 0))
        tensors = {k: v.detach().cpu().contiguous() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        save_file(tensors, str(out / batch_file))  # each process its own micro-batch
        # The weights are still those of the last good step: keep them (once).
        if self.args.should_save:
            save_checkpoint(self.model, self.checkpoint_info, out / "last-finite", tokenizer=self.checkpoint_tokenizer)
        found = f"loss is {losses.item()}" if world == 1 else f"losses of processes 0-{world - 1} are {losses.tolist()}"
        saved = out / (NONFINITE_BATCH if world == 1 else "nonfinite_batch.rank*.safetensors")
        raise NonFiniteLossError(
            f"step {self.state.global_step}: {found}; batch saved to {saved}, "
            f"last finite weights to {out / 'last-finite'} (try --dtype float32 or a lower --learning_rate)"
        )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        save_checkpoint(
            self.model, self.checkpoint_info, output_dir, tokenizer=self.checkpoint_tokenizer, state_dict=state_dict
        )
        # The arguments as JSON, not as the pickle transformers writes.
        (Path(output_dir) / "training_args.json").write_text(self.args.to_json_string(), encoding="utf-8")
        logger.info("saved %s checkpoint to %s", self.checkpoint_info.method, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # peft adapters and model directories: transformers' own loading (shards, FSDP, DeepSpeed included).
        if not self._method_of(resume_from_checkpoint).load_weights(model or self.model, Path(resume_from_checkpoint)):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        checkpoint = self.state.best_model_checkpoint
        logger.info("loading best checkpoint %s (%s)", checkpoint, self.state.best_metric)
        if not self._method_of(checkpoint).load_weights(self.model, Path(checkpoint)):
            super()._load_best_model()

    def _method_of(self, checkpoint: str):
        """The method a checkpoint to load was trained with; it must be this run's."""
        method = CheckpointInfo.load(checkpoint).method
        if method != self.checkpoint_info.method:
            raise CheckpointError(f"{checkpoint}: checkpoint has method {method}, this run trains "
                                  f"{self.checkpoint_info.method} (--finetuning_type)")
        return get_method(method)

    def resource_metrics(self, train_runtime: float) -> dict[str, float]:
        """Training tokens per second of this session (prompt + answer, no padding) and peak memory in MB.

        Peak memory is the GPU's peak allocation when training on CUDA, else the process's peak RSS.
        """
        # What transformers itself subtracts in its periodic logs: tokens seen before a resumed session.
        seen = self.state.num_input_tokens_seen - getattr(self, "_initial_num_input_tokens_seen", 0)
        metrics = {"train_tokens_per_second": round(seen / train_runtime, 2) if train_runtime else 0.0}
        if torch.cuda.is_available() and self.args.device.type == "cuda":
            metrics["train_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
            metrics["train_peak_memory_mb"] = round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
        return metrics


def supervised_logits_only(inputs: dict, pad_to_multiple_of: int | None = None) -> dict:
    """``inputs`` whose forward computes logits only where they meet a label: ``logits_to_keep`` the
    positions ``p`` whose next label ``labels[:, p + 1]`` is supervised in some row, and ``shift_labels``
    those labels (transformers' causal LM loss then shifts nothing). The loss sums the same
    (logit, label) pairs; the output layer and the softmax skip prompt and padding positions.

    With ``pad_to_multiple_of`` (a :class:`~sft.data.encoding.PackingCollator`'s), the kept positions are
    as many as the next multiple, the extra ones repeating the last position with ignored labels: the
    output layer's product then has a shape that repeats from batch to batch too."""
    following = inputs["labels"][:, 1:]  # (B, T - 1): what position p predicts
    keep = (following != IGNORE_INDEX).any(0).nonzero().flatten()  # (K,)
    labels = following[:, keep]  # (B, K)
    fill = -len(keep) % pad_to_multiple_of if pad_to_multiple_of and len(keep) else 0
    if fill:
        keep = torch.cat([keep, keep[-1:].expand(fill)])
        labels = torch.cat([labels, labels.new_full((labels.shape[0], fill), IGNORE_INDEX)], dim=1)
    return {**inputs, "logits_to_keep": keep, "shift_labels": labels}


@dataclass
class GenerationEval:
    """Generate for a few dev examples and score them (ROUGE/BLEU-4), as during evaluation proper; with a
    ``shard`` of several processes (:class:`SFTTrainer` sets it), each generates its share and every
    process gets the same scores."""

    tokenizer: PreTrainedTokenizerBase
    examples: list[Example]
    max_source_length: int
    generation: GenerationArguments
    shard: Shard = field(default_factory=Shard)

    def __call__(self, model) -> dict:
        _, scores = evaluate_examples(model, self.tokenizer, self.examples, self.max_source_length, self.generation,
                                      shard=self.shard)
        return scores


class SaveAtEndCallback(TrainerCallback):
    """Make the last step a resumable checkpoint even when ``max_steps < save_steps``."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True
        return control
