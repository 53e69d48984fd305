"""Pretrain the embedded GLM model from scratch on raw text (next-token prediction).

    python -m tools.pretrain --output_dir sft/embedded/glm-zh-tiny --max_steps 2000 --time_budget_minutes 27

Text is packed into fixed-length rows (documents end with ``</s>``). Each training row is drawn
from one source, sources weighted by ``--records_weight`` (the project's records) and token counts
(the rest). Rows of a *records* source (header, line break, text: :mod:`tools.corpus`) start at a
document. ``--objective`` picks the loss per row:

* ``causal``: every token predicts the next one.
* ``prefix_lm``: a split ``s``; tokens before it attend to each other in both directions
  (GLM's blank-infilling prefix), tokens after it causally; loss only after the split.
  ``s = 0`` is a plain causal row.
* ``mix``: per row ``prefix_lm`` with probability ``--prefix_lm_share``, else ``causal``.

A records row is always split right after its first document's header (unless the objective is
``causal``): the header is the bidirectional prompt, as the P-tuning prompt is later.

At the end the model is saved in transformers' format with the tokenizer, a held-out sample
(``heldout.txt``), its perplexity (``heldout_ppl.json``), the arguments (``pretrain_args.json``)
and a model card (``README.md``) saying how to rebuild it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    GlmConfig,
    GlmForCausalLM,
    HfArgumentParser,
    PreTrainedTokenizerBase,
)

from ptuning.masks import build_attention_mask
from sft.cli import run_command
from sft.data import IGNORE_INDEX
from sft.embedded import DEFAULT_MODEL_DIR
from sft.models import DEFAULTS_FILE
from sft.errors import UserError
from tools import corpus

logger = logging.getLogger(__name__)

OBJECTIVES = ("causal", "prefix_lm", "mix")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
HELDOUT_FILE = "heldout.txt"
HELDOUT_PPL_FILE = "heldout_ppl.json"
ARGS_FILE = "pretrain_args.json"
CARD_FILE = "README.md"


@dataclass
class PretrainArguments(corpus.RecordsArguments):
    output_dir: str = field(default=str(DEFAULT_MODEL_DIR), metadata={"help": "Where the model, tokenizer and card go."})
    tokenizer_dir: str = field(
        default=str(DEFAULT_MODEL_DIR), metadata={"help": "Tokenizer to use (python -m tools.build_tokenizer writes it)."}
    )
    corpus_file: str | None = field(
        default=None,
        metadata={"help": "Plain UTF-8 text, documents separated by blank lines; replaces the package corpus."},
    )
    objective: str = field(default="mix", metadata={"help": f"Training objective: {', '.join(OBJECTIVES)}."})
    prefix_lm_share: float = field(default=0.5, metadata={"help": "With --objective mix: share of prefix_lm rows."})
    max_prefix_fraction: float = field(
        default=0.5, metadata={"help": "prefix_lm split points are uniform in [0, this * seq_len]."}
    )
    seq_len: int = field(default=256, metadata={"help": "Tokens per packed training row."})
    batch_size: int = field(default=8, metadata={"help": "Rows per optimiser step."})
    max_steps: int = field(default=2000, metadata={"help": "Optimiser steps (the cosine schedule spans them)."})
    time_budget_minutes: float = field(
        default=0.0,
        metadata={"help": "Wall-time cap for training; the schedule then follows max(step, time) progress. 0 = none."},
    )
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate."})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "Final learning rate as a share of the peak."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    seed: int = field(default=1234, metadata={"help": "Seed of initialisation, sampling and the held-out split."})
    heldout_fraction: float = field(default=0.02, metadata={"help": "Share of each source's documents held out."})
    heldout_sources: str = field(
        default="sanguo,records,corpus_file",
        metadata={"help": "Sources (comma-separated) whose held-out documents fill heldout.txt."},
    )
    heldout_max_bytes: int = field(default=28_000, metadata={"help": "Size cap of heldout.txt in UTF-8 bytes."})
    records_chat_share: float = field(
        default=0.5, metadata={"help": "Share of records laid out as a ChatGLM3 chat turn (header = query)."}
    )
    records_weight: float = field(
        default=0.75, metadata={"help": "Share of training rows drawn from the project's records (tools.records)."}
    )
    bf16: bool = field(
        default=True, metadata={"help": "bfloat16 autocast for forward and backward (weights and AdamW stay fp32)."}
    )
    num_threads: int = field(default=2, metadata={"help": "torch CPU threads."})
    log_every: int = field(default=50, metadata={"help": "Steps between loss records in train_log.json."})
    hidden_size: int = field(default=256, metadata={"help": "Model width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Decoder layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Query heads."})
    num_key_value_heads: int = field(default=2, metadata={"help": "Key/value heads (grouped-query attention)."})
    head_dim: int = field(default=64, metadata={"help": "Width of one attention head."})
    intermediate_size: int = field(default=768, metadata={"help": "SwiGLU hidden width."})
    max_position_embeddings: int = field(default=1024, metadata={"help": "Longest supported sequence."})


POSITIVE_INTS = ("batch_size", "records_count", "max_steps", "num_threads", "log_every", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")


def validate_args(args: PretrainArguments) -> None:
    """Raise one one-line ``ValueError`` naming every bad flag, what it expected and what it found."""
    problems = [f"--{name}: expected a positive integer, found {getattr(args, name)}"
                for name in POSITIVE_INTS if getattr(args, name) < 1]
    if args.objective not in OBJECTIVES:
        problems.append(f"--objective: expected one of {', '.join(OBJECTIVES)}, found {args.objective!r}")
    for name in ("prefix_lm_share", "max_prefix_fraction", "heldout_fraction", "records_weight", "records_open_share",
                 "records_chat_share", "records_generic_share", "records_symbol_share", "records_long_share",
                 "records_ordered_share"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            problems.append(f"--{name}: expected a value in [0, 1], found {getattr(args, name)}")
    if not 2 <= args.seq_len <= args.max_position_embeddings:
        problems.append(f"--seq_len: expected 2..{args.max_position_embeddings} (--max_position_embeddings), "
                        f"found {args.seq_len}")
    if args.num_key_value_heads > 0 and args.num_attention_heads % args.num_key_value_heads:
        problems.append(f"--num_key_value_heads: expected a divisor of --num_attention_heads "
                        f"{args.num_attention_heads}, found {args.num_key_value_heads}")
    if args.corpus_file and not Path(args.corpus_file).is_file():
        problems.append(f"--corpus_file: expected a text file, found no file {args.corpus_file}")
    if not Path(args.tokenizer_dir).is_dir():
        problems.append(f"--tokenizer_dir: expected a tokenizer directory, found no directory {args.tokenizer_dir}")
    if problems:
        raise ValueError("; ".join(problems))


def build_config(args: PretrainArguments, tokenizer: PreTrainedTokenizerBase) -> GlmConfig:
    """ChatGLM2/3-style GLM: GQA, half-width rotary, qkv bias, SwiGLU, tied embeddings."""
    return GlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        head_dim=args.head_dim,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=args.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        attention_bias=True,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Generation stops at ``</s>`` or where the next turn would start (ChatGLM3 convention)."""
    stops = [tokenizer.eos_token_id] + tokenizer.convert_tokens_to_ids(["<|user|>", "<|observation|>"])
    return GenerationConfig(eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)


# --------------------------------------------------------------------------- corpus


def read_corpus_file(path: str) -> list[str]:
    """Documents of a plain text file, separated by blank lines."""
    text = Path(path).read_text(encoding="utf-8")
    return [doc.strip("\n") for doc in text.split("\n\n") if doc.strip()]


def load_sources(args: PretrainArguments) -> list[tuple[corpus.Source, list[str]]]:
    """``[(source, documents)]``: the package corpus, or the one ``--corpus_file``."""
    if args.corpus_file:
        docs = read_corpus_file(args.corpus_file)
        return [(corpus.Source("corpus_file", args.corpus_file, "given by the user", lambda: docs), docs)]
    sources = corpus.general_sources() + corpus.record_sources(args, args.seed)
    loaded = [(source, source.load()) for source in sources]
    for source, docs in loaded:
        logger.info("loaded %s: %d documents, %d characters", source.name, len(docs), sum(map(len, docs)))
    return loaded


def split_sources(
    loaded: list[tuple[corpus.Source, list[str]]], args: PretrainArguments
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``(train, heldout)`` documents per source; a training copy of any held-out text is dropped."""
    train, heldout = {}, {}
    for source, docs in loaded:
        train[source.name], heldout[source.name] = corpus.split_heldout(docs, args.heldout_fraction, args.seed)
    seen = {doc for docs in heldout.values() for doc in docs}
    return {name: [d for d in docs if d not in seen] for name, docs in train.items()}, heldout


def encode_documents(tokenizer: PreTrainedTokenizerBase, documents: list[str]) -> list[int]:
    """One token stream: every document followed by ``</s>``."""
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    return stream


def encode_records(
    tokenizer: PreTrainedTokenizerBase, documents: list[str], chat_share: float = 0.0, seed: int = 0
) -> list[tuple[list[int], int]]:
    """``[(ids, header_length)]`` per header-then-text document, ``</s>`` at the end.

    A share ``chat_share`` of them (seeded) is laid out as a ChatGLM3 chat turn, exactly as
    ``sft.data`` encodes a training row with ``--template chatglm3`` (the header as the user's
    query, the text as the answer), so the template's role tokens are known to the base; the
    others are the header and its line break, then the text, each encoded on its own.
    """
    from sft.data.encoding import encode_example, encode_prompt
    from sft.data.formats import Example
    from sft.data.templates import Turn, get_template

    template, rng, encoded = get_template("chatglm3"), random.Random(seed), []
    plain = [i for i, _ in enumerate(documents) if rng.random() >= chat_share]
    headers, texts = zip(*(doc.split("\n", 1) for doc in documents))
    by_index = {}
    if plain:
        header_ids = tokenizer([headers[i] + "\n" for i in plain], add_special_tokens=False, verbose=False)["input_ids"]
        text_ids = tokenizer([texts[i] for i in plain], add_special_tokens=False, verbose=False)["input_ids"]
        by_index = {i: (h + t + [tokenizer.eos_token_id], len(h)) for i, h, t in zip(plain, header_ids, text_ids)}
    for i, (header, text) in enumerate(zip(headers, texts)):
        if i not in by_index:
            example = Example(template.render([Turn(header, text)]))
            ids = encode_example(example, tokenizer, 10**6, 10**6)["input_ids"]
            by_index[i] = (ids, len(encode_prompt(example, tokenizer, 10**6)))
        encoded.append(by_index[i])
    return encoded


def pack_records(records: list[tuple[list[int], int]], seq_len: int) -> tuple[list[list[int]], list[int]]:
    """Rows that each start at a record: records follow one another, the row's last one is cut at
    ``seq_len`` (and the next row starts at the record after it). Returns rows and the header
    length of each row's first record."""
    rows, headers, i = [], [], 0
    while i < len(records):
        row, header = [], min(records[i][1], seq_len - 1)
        while len(row) < seq_len and i < len(records):
            row += records[i][0]
            i += 1
        if len(row) >= seq_len:  # the remainder of the corpus that does not fill a row is dropped
            rows.append(row[:seq_len])
            headers.append(header)
    return rows, headers


class PackedCorpus:
    """``(N, seq_len)`` rows per source, with the header length of each row (0: no header),
    sampled by source weight.

    Within a source rows are visited in a seeded random order, reshuffled after each pass.
    """

    def __init__(
        self,
        streams: dict[str, list[int]],
        weights: dict[str, float],
        seq_len: int,
        seed: int,
        records: dict[str, list[tuple[list[int], int]]] | None = None,
    ):
        self.rows, self.headers = {}, {}
        for name, stream in streams.items():
            n = len(stream) // seq_len
            if n:
                self.rows[name] = torch.tensor(stream[: n * seq_len]).view(n, seq_len)  # (N, T)
                self.headers[name] = torch.zeros(n, dtype=torch.long)  # (N,)
        for name, docs in (records or {}).items():
            rows, headers = pack_records(docs, seq_len)
            if rows:
                self.rows[name], self.headers[name] = torch.tensor(rows), torch.tensor(headers)
        if not self.rows:
            raise ValueError(f"corpus too small: no source has {seq_len} tokens (--seq_len)")
        self.names = list(self.rows)
        self.weights = [weights[name] for name in self.names]
        self.rng = random.Random(seed)
        self.order = {name: [] for name in self.names}

    def _next_row(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.order[name]:
            self.order[name] = list(range(len(self.rows[name])))
            self.rng.shuffle(self.order[name])
        i = self.order[name].pop()
        return self.rows[name][i], self.headers[name][i]

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T)`` token ids and ``(B,)`` header lengths."""
        names = self.rng.choices(self.names, weights=self.weights, k=batch_size)
        rows, headers = zip(*(self._next_row(name) for name in names))
        return torch.stack(rows), torch.stack(headers)


def source_weights(token_counts: dict[str, int], records_weight: float) -> dict[str, float]:
    """The project's records share ``records_weight``, the others the rest, each in proportion to its tokens."""
    own = {n: c for n, c in token_counts.items() if n == "records"}
    general = {n: c for n, c in token_counts.items() if n not in own}
    if not own or not general:
        return {n: c / sum(token_counts.values()) for n, c in token_counts.items()}
    weights = {n: records_weight * c / sum(own.values()) for n, c in own.items()}
    weights |= {n: (1 - records_weight) * c / sum(general.values()) for n, c in general.items()}
    return weights


# --------------------------------------------------------------------------- objective


def sample_split_points(
    batch_size: int, args: PretrainArguments, rng: random.Random, headers: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B,)`` prefix lengths: 0 for a causal row, uniform in ``[0, max_prefix]`` for a prefix-LM row.

    A row with a header (``headers``, ``(B,)``, > 0) is split right after it unless the objective
    is ``causal``: the header is always read both ways, as a P-tuning prompt is later.
    """
    max_prefix = int(args.max_prefix_fraction * args.seq_len)
    splits = []
    for b in range(batch_size):
        header = int(headers[b]) if headers is not None else 0
        prefix_lm = args.objective == "prefix_lm" or (args.objective == "mix" and rng.random() < args.prefix_lm_share)
        if header and args.objective != "causal":
            splits.append(header)
        else:
            splits.append(rng.randint(0, max_prefix) if prefix_lm else 0)
    return torch.tensor(splits)


def model_inputs(input_ids: torch.Tensor, split: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward kwargs for ``(B, T)`` rows with ``(B,)`` prefix lengths.

    Tokens before ``split[b]`` see each other in both directions, so predicting them would leak:
    their labels are ignored. Labels are unshifted (the model shifts): position ``split[b] - 1``,
    which sees only the prefix, predicts the first supervised token.
    """
    batch, length = input_ids.shape
    mask = build_attention_mask(
        torch.ones_like(input_ids), length, mask_type="prefix_lm", bidirectional_length=split, dtype=torch.float32
    )  # (B, 1, T, T)
    positions = torch.arange(length)[None].expand(batch, -1)  # (B, T); a 4-D mask carries no positions
    labels = input_ids.masked_fill(positions < split[:, None], IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


# --------------------------------------------------------------------------- training


def learning_rate(progress: float, step: int, args: PretrainArguments) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak as ``progress`` goes 0 -> 1."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return args.learning_rate * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, args: PretrainArguments) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms and biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95), eps=1e-8)


def train(model: GlmForCausalLM, data: PackedCorpus, args: PretrainArguments) -> dict:
    """Run the optimisation loop; returns steps, tokens seen, wall time and the loss log."""
    optimizer = make_optimizer(model, args)
    rng = random.Random(args.seed + 1)
    budget_s = args.time_budget_minutes * 60
    start, log, step, progress, time_led = time.time(), [], 0, 0.0, 0
    model.train()
    bar = tqdm(total=args.max_steps, desc="pretrain", dynamic_ncols=True)
    while progress < 1.0:
        lr = learning_rate(progress, step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        input_ids, headers = data.sample(args.batch_size)
        inputs = model_inputs(input_ids, sample_split_points(args.batch_size, args, rng, headers))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.time() - start
        time_progress = elapsed / budget_s if budget_s else 0.0
        time_led += time_progress > step / args.max_steps  # the schedule then depends on machine speed
        progress = max(step / args.max_steps, time_progress)
        if step % args.log_every == 0 or progress >= 1.0:
            log.append({"step": step, "loss": round(loss.item(), 4), "lr": lr, "elapsed_s": round(elapsed, 1)})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
    bar.close()
    stopped_by_time = step < args.max_steps
    return {"steps": step, "tokens_seen": step * args.batch_size * args.seq_len, "wall_time_s": time.time() - start,
            "stopped_by_time_budget": stopped_by_time, "time_led_steps": time_led, "log": log}


@torch.no_grad()
def perplexity_of_ids(model: GlmForCausalLM, ids: list[int], seq_len: int, batch_size: int = 16) -> float:
    """Causal perplexity of one token stream, cut into non-overlapping windows of ``seq_len``."""
    model.eval()
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - 1, seq_len)]
    full = [w for w in windows if len(w) == seq_len]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[w] for w in windows if 2 <= len(w) < seq_len]  # the shorter last window
    total_nll, total_tokens = 0.0, 0
    for batch in batches:
        input_ids = torch.tensor(batch)  # (b, t)
        logits = model(input_ids=input_ids).logits[:, :-1]  # (b, t-1, V)
        targets = input_ids[:, 1:]  # (b, t-1)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        total_nll += nll.item()
        total_tokens += targets.numel()
    return math.exp(total_nll / total_tokens)


def heldout_perplexity(model: GlmForCausalLM, tokenizer: PreTrainedTokenizerBase, text: str, seq_len: int = 256) -> float:
    """Causal perplexity of ``text`` (as stored in ``heldout.txt``): the figure the model card records."""
    return perplexity_of_ids(model, tokenizer.encode(text, add_special_tokens=False), seq_len)


# --------------------------------------------------------------------------- evaluation and saving


def heldout_text(heldout: dict[str, list[str]], args: PretrainArguments) -> str:
    """``heldout.txt``: held-out documents of ``--heldout_sources``, alternating, one per line, capped in bytes."""
    names = [n for n in args.heldout_sources.split(",") if heldout.get(n)]
    if not names:
        found = ", ".join(heldout)
        raise ValueError(f"--heldout_sources: none of {args.heldout_sources} has held-out documents (found: {found})")
    budget = args.heldout_max_bytes // len(names)
    picked: dict[str, list[str]] = {name: [] for name in names}
    for name in names:
        used = 0
        for doc in heldout[name]:
            size = len(doc.encode("utf-8")) + 1
            if used + size <= budget:
                picked[name].append(doc)
                used += size
    rows = [doc for group in zip(*(picked[n] + [""] * (max(map(len, picked.values())) - len(picked[n])) for n in names))
            for doc in group if doc]
    return "\n".join(rows) + "\n"


def evaluate(
    model: GlmForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    heldout: dict[str, list[str]],
    args: PretrainArguments,
) -> dict:
    """Held-out perplexities: of ``heldout.txt`` and of each source's held-out documents (first 10k tokens)."""
    per_source = {}
    for name, docs in heldout.items():
        ids = encode_documents(tokenizer, docs)[:10_000]
        if len(ids) >= 2:
            per_source[name] = round(perplexity_of_ids(model, ids, args.seq_len), 3)
    ppl = heldout_perplexity(model, tokenizer, text, args.seq_len)
    logger.info("held-out perplexity: %s %.3f, per source %s", HELDOUT_FILE, ppl, per_source)
    return {"heldout_txt_perplexity": round(ppl, 3), "seq_len": args.seq_len, "per_source_perplexity": per_source}


@torch.no_grad()
def greedy_sample(model: GlmForCausalLM, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int = 40) -> str:
    model.eval()
    input_ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    out = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)


def rebuild_command(args: PretrainArguments) -> str:
    """``python -m tools.pretrain`` with every flag that differs from its default."""
    defaults = asdict(PretrainArguments())
    flags = [f"--{k} {v}" for k, v in asdict(args).items() if v != defaults[k] and k not in ("output_dir", "tokenizer_dir")]
    return " ".join(["python -m tools.pretrain", *flags])


def save(
    model: GlmForCausalLM, tokenizer: PreTrainedTokenizerBase, args: PretrainArguments, text: str, metrics: dict
) -> Path:
    """Weights, generation config, tokenizer files, held-out sample, metrics and arguments."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(out)
    if Path(args.tokenizer_dir).resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            if (Path(args.tokenizer_dir) / name).exists():
                shutil.copy2(Path(args.tokenizer_dir) / name, out / name)
    (out / HELDOUT_FILE).write_text(text, encoding="utf-8")
    (out / HELDOUT_PPL_FILE).write_text(json.dumps(metrics["evaluation"], indent=2, ensure_ascii=False) + "\n")
    (out / ARGS_FILE).write_text(json.dumps(asdict(args), indent=2, ensure_ascii=False) + "\n")
    # The records taught it header -> text under a bidirectional header: tune it the same way.
    (out / DEFAULTS_FILE).write_text(json.dumps({"mask": "prefix_lm", "template": "chatglm3"}) + "\n")
    (out / "train_log.json").write_text(json.dumps(metrics["training"]["log"], indent=1) + "\n")
    return out


def model_card(args: PretrainArguments, config: GlmConfig, metrics: dict, sample: tuple[str, str]) -> str:
    """Markdown model card; the line ``heldout_perplexity: X`` is machine-readable."""
    t, ev, c = metrics["training"], metrics["evaluation"], metrics["corpus"]
    mb = metrics["weights_bytes"] / 1e6
    rows = "\n".join(
        f"| {s['name']} | {s['description']} | {s['licence']} | {s['train_documents']} | {s['train_tokens']:,} | "
        f"{s['heldout_documents']} | {s['weight']:.3f} | {ev['per_source_perplexity'].get(s['name'], '-')} |"
        for s in c
    )
    symbols = (
        f"\n{args.records_symbol_share:.0%} of their headers separate keys from values and pairs from pairs with two"
        " symbols drawn for that record (`键｜值、键｜值`, `键～值；键～值`...), never ADGEN's `#` and `*`,"
        " which stays a layout the base has not seen."
        if args.records_symbol_share else ""
    )
    if args.records_long_share:
        symbols += (f"\n{args.records_long_share:.0%} of their headers are long, 6-9 keys (the kind's own, then invented"
                    " ones), as ADGEN's headers run to 9 pairs; the others have 3-6.")
    if args.records_ordered_share:
        symbols += (f" {args.records_ordered_share:.0%} of their texts name the values in header order, the others in"
                    " a random one.")
    return f"""# glm-zh-tiny

A tiny ChatGLM2/3-style model (transformers `GlmForCausalLM`) trained from scratch on this
machine, shipped so that the project runs offline without downloading weights. It writes
Chinese-looking text: plain prose, dictionary entries, and short texts that use a `键：值；键：值` or
`【键】值【键】值` header: product texts about goods for the home and the desk, foods, cities, animals, tools,
books and the like. It is a test and demo base model, not an assistant. It has never seen clothing ad copy,
ADGEN's `键#值*键#值` layout or anything under `data/`: the P-tuning demo's task is new to it.

## Architecture

{metrics["params"]:,} parameters ({mb:.1f} MB of fp32 safetensors), vocab {config.vocab_size},
hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} query heads /
{config.num_key_value_heads} key-value heads of width {config.head_dim}, SwiGLU {config.intermediate_size},
RMSNorm eps {config.rms_norm_eps}, rotary on half of each head (`partial_rotary_factor` 0.5),
qkv bias, tied input/output embeddings, up to {config.max_position_embeddings} positions.

Tokenizer (`tools.build_tokenizer`, trained on the corpus below): SentencePiece unigram, {config.vocab_size} pieces, byte fallback, identity normalisation,
no dummy prefix, `"\\n"` as a piece; ids 0-3 `<unk> <s> </s> <pad>`, then `[gMASK] sop eop <|system|>
<|user|> <|assistant|> <|observation|>`. `add_special_tokens=True` adds nothing. Generation stops at
`</s>`, `<|user|>` or `<|observation|>`.

## Corpus

Read in place from installed packages (`pip install -e .[pretrain]`) or written by the project
(`tools/records.py`); no text is copied into the repository. Nothing under `data/` and no ad copy was
read (`tests/tools/test_corpus.py` rebuilds the document list and checks that no `data/adgen` answer,
nor any 20-character piece of one, is in it). Records sources start their rows at a document; their
header is the bidirectional prompt of prefix-LM rows. {args.records_chat_share:.0%} of the project's records
are laid out as a ChatGLM3 chat turn (`[gMASK]sop<|user|>\\n` header `<|assistant|>\\n` text), as
`sft.data` encodes a row with `--template chatglm3`; the others as the header, a line break and the text.
{args.records_open_share:.0%} of their values are random words of jionlp's dictionary, which the text can only
name by copying them from the header. {args.records_generic_share:.0%} of their clauses name a value in a
phrasing that fits any key (`{{k}}是{{v}}`, `{{v}}的{{k}}`...), and as many records carry an invented key (a dictionary
word) said that way: a key the base has no phrasing for still gets its value named.{symbols}

| source | what | licence | train docs | train tokens | held-out docs | row weight | held-out ppl |
|---|---|---|---|---|---|---|---|
{rows}

## Training

Objective `{args.objective}` (prefix-LM share {args.prefix_lm_share}), rows of {args.seq_len} tokens,
batch {args.batch_size}, AdamW peak lr {args.learning_rate} with {args.warmup_steps} warm-up steps and
cosine decay to {args.min_lr_ratio}x, seed {args.seed}.

- steps: {t["steps"]} (of {args.max_steps}; stopped by time budget: {t["stopped_by_time_budget"]})
- steps where the time budget, not the step count, set the learning rate: {t["time_led_steps"]}
  (0 means the run is deterministic on the same hardware and software)
- tokens seen: {t["tokens_seen"]:,}
- wall time: {t["wall_time_s"] / 60:.1f} min on {metrics["machine"]}
- final training loss: {t["log"][-1]["loss"] if t["log"] else "-"}

## Evaluation

Causal perplexity of `heldout.txt` (held-out documents of {args.heldout_sources.replace(",", ", ")}, never
trained on; windows of {ev["seq_len"]} tokens, `tools.pretrain.heldout_perplexity`):

heldout_perplexity: {ev["heldout_txt_perplexity"]}

Greedy continuation of {sample[0]!r}: {sample[1]!r}

## Rebuild

    scripts/build_embedded.sh

which runs `python -m tools.build_tokenizer` and then (with `OMP_WAIT_POLICY=PASSIVE`, which keeps
steps fast when other jobs share the cores)

    {rebuild_command(args)}

(`pretrain_args.json` holds every argument; `--time_budget_minutes 0` makes the schedule depend on
steps only).
"""


def machine_description(num_threads: int) -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {num_threads} torch threads, torch {torch.__version__}"


def parse_args(argv: list[str] | None = None) -> PretrainArguments:
    """The flags, checked (:func:`validate_args`): a ``ValueError`` names every bad one."""
    (args,) = HfArgumentParser(PretrainArguments).parse_args_into_dataclasses(args=argv)
    validate_args(args)
    return args


def pretrain(args: PretrainArguments) -> None:
    """Pretrain, evaluate and save into ``args.output_dir``."""
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    loaded = load_sources(args)
    train_docs, heldout_docs = split_sources(loaded, args)
    is_records = {source.name: source.records for source, _ in loaded}
    streams = {n: encode_documents(tokenizer, d) for n, d in train_docs.items() if not is_records[n]}
    records = {n: encode_records(tokenizer, d, args.records_chat_share, args.seed)
               for n, d in train_docs.items() if is_records[n]}
    token_counts = {n: len(s) for n, s in streams.items()} | {n: sum(len(ids) for ids, _ in r) for n, r in records.items()}
    weights = source_weights(token_counts, args.records_weight)
    try:
        data = PackedCorpus(streams, weights, args.seq_len, args.seed, records)
    except ValueError as err:  # a corpus shorter than one row: the user's file or --seq_len
        raise UserError(str(err)) from None
    config = build_config(args, tokenizer)
    model = GlmForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    logger.info("model: %d parameters; training rows per source: %s", params, {n: len(r) for n, r in data.rows.items()})
    training = train(model, data, args)
    minutes = training["wall_time_s"] / 60
    logger.info("trained %d steps, %d tokens in %.1f min", training["steps"], training["tokens_seen"], minutes)
    text = heldout_text(heldout_docs, args)
    metrics = {
        "training": training,
        "evaluation": evaluate(model, tokenizer, text, heldout_docs, args),
        "params": params,
        "machine": machine_description(args.num_threads),
        "corpus": [
            {"name": s.name, "description": s.description, "licence": s.licence, "train_documents": len(train_docs[s.name]),
             "train_tokens": token_counts[s.name], "heldout_documents": len(heldout_docs[s.name]), "weight": weights[s.name]}
            for s, _ in loaded
        ],
    }
    out = save(model, tokenizer, args, text, metrics)
    metrics["weights_bytes"] = (out / "model.safetensors").stat().st_size
    prompt = "类别：动物；动物：熊猫；栖息地：竹林；性格：温顺\n"
    card = model_card(args, config, metrics, (prompt, greedy_sample(model, tokenizer, prompt)))
    (out / CARD_FILE).write_text(card, encoding="utf-8")
    logger.info("saved model, tokenizer and card to %s", out)


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` defaults to the command line (tests pass a list). Returns the exit status:
    a bad flag is one ``error: ...`` line and status 2 (:func:`sft.cli.run_command`)."""
    return run_command(lambda: parse_args(argv), pretrain)


if __name__ == "__main__":
    sys.exit(main())
