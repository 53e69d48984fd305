"""Text generation for evaluation and inference: batched, left-padded, with the KV cache.

What a generation run needs, and nothing more (the settings are
:class:`sft.eval.arguments.GenerationArguments`: greedy by default, sampling on request, bounded
by ``max_new_tokens``, never a ``max_length`` that counts the prompt, and with ``min_new_tokens`` no
eos earlier; ``repetition_penalty`` and ``no_repeat_ngram_size`` look at the answer only, as the
prompt's values are what an answer should repeat):

* :func:`generate_token_ids` / :func:`generate_answers`: one batch.
  Prompts are padded on the left so every row's next token sits in the last column; generation
  stops on every eos id the model declares (:func:`eos_token_ids`; GLM-4 declares three). An
  :class:`Answer` says whether it stopped there or at ``max_new_tokens`` (cut mid-text).
* :func:`generate_all`: many prompts, sorted by length so a batch wastes little padding,
  results handed back as rows finish and returned in input order. Under ``torchrun`` the
  batches are dealt out to the processes (:class:`Shard`).

A P-tuning prefix and the prefix-LM/causal mask are applied by hooks inside the model
(:mod:`ptuning.injection`), so nothing here depends on the fine-tuning method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)
from transformers.generation.streamers import BaseStreamer

from sft.data import DataCollator
from sft.errors import UserError
from sft.eval.arguments import GenerationArguments

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's part of a generation run split over the processes of a ``torch.distributed`` group.

    What makes the split exact: the batches are those one process would make
    (:func:`length_sorted_batches`), dealt round-robin, so in round ``k`` process ``r`` generates
    batch ``k * world + r``, and after each round every process receives every batch's texts
    (:meth:`exchange`). A batch holds the same rows with the same left padding as in one process,
    and :func:`generate_token_ids` re-seeds per batch, so greedy decoding and sampling give the
    texts one process gives, handed back in the same order. Splitting rows instead (rank ``r``
    takes rows ``r::world``) would change each batch's padding, and padding can change a greedy
    argmax where two logits are close.
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Shard:
        """The running process group's shard (one process outside ``torchrun``)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        """Process 0: the one that writes files and logs."""
        return self.rank == 0

    def exchange(self, mine: T) -> list[T]:
        """Every process's ``mine``, in rank order (a collective: every process must call it)."""
        if self.world == 1:
            return [mine]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return gathered

    def on_main(self, work: Callable[[], T]) -> T:
        """``work()`` done by process 0 only (it writes files), its result handed to every process.

        A :class:`~sft.errors.UserError` there is raised in every process, so none waits for the others.
        """
        if self.world == 1:
            return work()
        outcome: list[Any] = [None]
        if self.main:
            try:
                outcome[0] = (work(), None)
            except UserError as err:
                outcome[0] = (None, err)
        dist.broadcast_object_list(outcome, src=0)
        result, error = outcome[0]
        if error is not None:
            raise error
        return result


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a generation: the model's generation config (int or list) and the tokenizer's eos."""
    declared = model.generation_config.eos_token_id
    if declared is None:
        declared = []
    elif isinstance(declared, int):
        declared = [declared]
    ids = list(dict.fromkeys([*declared, tokenizer.eos_token_id]))
    return [i for i in ids if i is not None]


def _cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos:
            return ids[:position]
    return ids


class _AnswerOnly(LogitsProcessor):
    """A logits processor shown the tokens generated so far, not the prompt's ``prompt_width`` columns."""

    def __init__(self, processor: LogitsProcessor, prompt_width: int):
        self.processor, self.prompt_width = processor, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.processor(input_ids[:, self.prompt_width:], scores)


def _answer_processors(args: GenerationArguments, prompt_width: int) -> dict:
    """``generate()`` options for the penalties on repeats within the answer (transformers' own processors;
    its built-in ones would count the prompt too), with its built-in ones off so a model's generation
    config cannot add a second penalty."""
    processors = LogitsProcessorList()
    if args.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(args.repetition_penalty, prompt_ignore_length=prompt_width))
    if args.no_repeat_ngram_size:
        processors.append(_AnswerOnly(NoRepeatNGramLogitsProcessor(args.no_repeat_ngram_size), prompt_width))
    if not processors:
        return {}
    return {"logits_processor": processors, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def generate_token_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    args: GenerationArguments,
    streamer: BaseStreamer | None = None,
) -> list[list[int]]:
    """Generate one batch; return each row's new token ids, up to (not including) its first eos."""
    if any(not ids for ids in prompt_ids):
        raise ValueError("generate_token_ids: expected non-empty prompts, found an empty one")
    eos = eos_token_ids(model, tokenizer)
    collator = DataCollator.for_tokenizer(tokenizer, padding_side="left")  # real tokens flush right
    inputs = {k: v.to(model.device) for k, v in collator([{"input_ids": ids} for ids in prompt_ids]).items()}
    options = {"top_p": args.top_p, "temperature": args.temperature} if args.do_sample else {}
    if args.min_new_tokens:
        options["min_new_tokens"] = args.min_new_tokens
    options.update(_answer_processors(args, inputs["input_ids"].shape[1]))
    # Seeded in a forked RNG: runs repeat, and a caller's random stream (training's) is left as it was.
    cuda_devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(args.seed)
        output = model.generate(
            **inputs,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            num_beams=args.num_beams,
            eos_token_id=eos,
            pad_token_id=collator.pad_token_id,
            use_cache=True,
            streamer=streamer,
            **options,
        )  # (B, T + new)
    new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
    return [_cut_at_eos(ids, set(eos)) for ids in new_tokens]


@dataclass(frozen=True)
class Answer:
    """One row's generated text (special tokens dropped, stripped) and whether ``max_new_tokens`` ended
    it before any eos did: then the text may stop mid-sentence."""

    text: str
    at_limit: bool = False


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    args: GenerationArguments,
    streamer: BaseStreamer | None = None,
) -> list[Answer]:
    """Generate one batch; return each row's :class:`Answer`."""
    new_ids = generate_token_ids(model, tokenizer, prompt_ids, args, streamer)
    # Cut at the first eos, a row is max_new_tokens long only if no eos came.
    return [Answer(tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids) >= args.max_new_tokens)
            for ids in new_ids]


def length_sorted_batches(prompt_ids: list[list[int]], batch_size: int, skip: Iterable[int] = ()) -> list[list[int]]:
    """Indices of the rows not in ``skip``, longest first, cut into batches.

    Longest first: the batch that needs the most memory runs first, so a too-large
    ``batch_size`` fails at once rather than at the end.
    """
    skipped = set(skip)
    todo = sorted((i for i in range(len(prompt_ids)) if i not in skipped), key=lambda i: (-len(prompt_ids[i]), i))
    return [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]


def generate_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    args: GenerationArguments,
    *,
    on_result: Callable[[int, Answer], None] | None = None,
    skip: Iterable[int] = (),
    shard: Shard = Shard(),
) -> list[Answer | None]:
    """Generate for every prompt not in ``skip``, in batches of similar length, with a progress bar.

    ``on_result(index, answer)`` is called for each row as its batch finishes, in batch order.
    Returns the answers in input order; rows in ``skip`` are ``None``. With a ``shard`` of several
    processes, each generates its share of the batches and every process gets every answer.
    """
    results: list[Answer | None] = [None] * len(prompt_ids)
    batches = length_sorted_batches(prompt_ids, args.batch_size, skip)
    with tqdm(total=sum(map(len, batches)), desc="generating", unit="row", disable=not shard.main) as progress:
        for start in range(0, len(batches), shard.world):
            dealt = batches[start:start + shard.world]  # one batch per process, fewer in the last round
            mine = dealt[shard.rank] if shard.rank < len(dealt) else []
            answers = generate_answers(model, tokenizer, [prompt_ids[i] for i in mine], args) if mine else []
            for batch, batch_answers in shard.exchange((mine, answers)):
                for index, answer in zip(batch, batch_answers):
                    results[index] = answer
                    if on_result is not None:
                        on_result(index, answer)
                progress.update(len(batch))
    return results

