"""Character-level tokenizers for tests, so expected ``input_ids`` can be written out literally.

:class:`FakeTokenizer` (in process): a character's id is its code point (``ord("a") == 97``);
special tokens are atomic and have the fixed ids below, past the last Unicode code point so
they can never collide with a character. ``merges`` adds multi-character tokens, to mimic a
subword tokenizer that merges text across a boundary.

:func:`save_char_tokenizer` (on disk): a real ``transformers`` tokenizer with one token per
character, for subprocess tests of ``python -m sft.data check --tokenizer DIR``.

THUDM-style tokenizer files, for the conversion and template tests: :func:`sentencepiece_model`
trains a tiny SentencePiece model (ChatGLM2/3 ship one) on :func:`corpus_lines`;
:func:`tiktoken_ranks` learns a tiny byte-level BPE in tiktoken's ``base64 rank`` form (GLM-4
ships one) and :func:`tiktoken_encode` is an independent reference encoder for it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "<pad>", "[gMASK]", "sop", "<sop>", "eop",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
)  # fmt: skip
FIRST_SPECIAL_ID = 0x110000
UNK, BOS, EOS, PAD, GMASK, SOP, SOP4, EOP, SYSTEM, USER, ASSISTANT, OBSERVATION = range(
    FIRST_SPECIAL_ID, FIRST_SPECIAL_ID + len(SPECIAL_TOKENS)
)


def chars(text: str) -> list[int]:
    """The ids :class:`FakeTokenizer` gives ``text`` when it holds no special token or merge."""
    return [ord(char) for char in text]


class FakeTokenizer:
    """Character-level tokenizer with the surface ``sft.data`` uses.

    ``encode(text)`` with the default ``add_special_tokens=True`` prepends ``[gMASK] sop`` as
    ChatGLM's tokenizers do, so code that forgets ``add_special_tokens=False`` shows up in the
    expected lists.
    """

    eos_token = "</s>"
    pad_token = "<pad>"

    def __init__(self, merges: Sequence[str] = (), pad_token_id: int | None = PAD) -> None:
        self.merges = {text: FIRST_SPECIAL_ID + len(SPECIAL_TOKENS) + index for index, text in enumerate(merges)}
        self.vocab = {**{token: FIRST_SPECIAL_ID + i for i, token in enumerate(SPECIAL_TOKENS)}, **self.merges}
        self.pieces = {token_id: token for token, token_id in self.vocab.items()}
        alternatives = sorted(self.vocab, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, alternatives)) + "|.", re.DOTALL)
        self.eos_token_id = EOS
        self.pad_token_id = pad_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [GMASK, SOP] if add_special_tokens else []
        for piece in self.pattern.findall(text):
            ids.append(self.vocab.get(piece, ord(piece[0]) if len(piece) == 1 else UNK))
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        special = set(range(FIRST_SPECIAL_ID, FIRST_SPECIAL_ID + len(SPECIAL_TOKENS)))
        kept = [i for i in ids if not (skip_special_tokens and i in special)]
        return "".join(self.pieces[i] if i in self.pieces else chr(i) for i in kept)

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab[token] if token in self.vocab else ord(token) if len(token) == 1 else UNK


def save_char_tokenizer(directory: str | Path, alphabet: str) -> Path:
    """Write a ``transformers`` tokenizer with one token per character of ``alphabet`` to ``directory``.

    Characters outside ``alphabet`` become ``<unk>``; ``</s>`` is eos and ``<pad>`` is pad.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    symbols = [*SPECIAL_TOKENS, *sorted(set(alphabet))]
    model = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[], unk_token="<unk>"))
    model.add_special_tokens(list(SPECIAL_TOKENS))
    model.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.save_pretrained(str(directory))
    return Path(directory)


_ZH_WORDS = (
    "我们 你好 世界 今天 天气 很好 衣服 颜色 白色 黑色 裙子 宽松 线条 衬衫 设计 简约 时尚 舒适 面料 棉质 图案 印花 "
    "条纹 版型 显瘦 搭配 休闲 优雅 气质 女性 夏天 春天 秋天 冬天 喜欢 美丽 大家 一起 读书 学校 老师 学生 问题 答案 "
    "模型 训练 数据 中文 英文 回答 轮次 系统 用户 助手"
).split()
_EN_WORDS = (
    "the a of and to in is it you that was for on are with as they be at one have this from or had by word but "
    "what some we can out other were all there when up use your how said each she which do their time if will way "
    "about many then them write would like so these her long make thing see him two has look more day could go come"
).split()
_MARKS = ("，", "。", "！", "？", "：", "、", ",", ".", "!", "?", ":", "(", ")", "-", "[", "]")


def corpus_lines(count: int = 300, seed: int = 0) -> list[str]:
    """Mixed Chinese/English lines with numbers and punctuation (every line different, same every run)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(3, 10)):
            kind = rng.random()
            if kind < 0.45:
                parts.append("".join(rng.choice(_ZH_WORDS) for _ in range(rng.randint(1, 3))))
            elif kind < 0.8:
                parts.append(" " + " ".join(rng.choice(_EN_WORDS) for _ in range(rng.randint(1, 4))) + " ")
            elif kind < 0.9:
                parts.append(str(rng.randint(0, 2024)))
            else:
                parts.append(rng.choice(_MARKS))
        lines.append("".join(parts).strip())
    return lines


@lru_cache(maxsize=None)
def sentencepiece_model(
    dummy_prefix: bool = True, model_type: str = "bpe", normalization: str = "identity", user_defined: tuple = ()
) -> bytes:
    """A serialised SentencePiece model trained on :func:`corpus_lines`: 500 pieces, ``<unk> <s> </s>`` at
    0-2, byte fallback (emoji and rare characters become ``<0x..>`` pieces), ChatGLM's BPE by default;
    ``user_defined`` pieces are always kept whole."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=model, model_type=model_type, vocab_size=500,
        byte_fallback=True, add_dummy_prefix=dummy_prefix, normalization_rule_name=normalization,
        remove_extra_whitespaces=normalization != "identity", character_coverage=1.0,
        user_defined_symbols=list(user_defined), unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


GLM4_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)  # cl100k's pattern, which GLM-4's ChatGLM4Tokenizer passes to tiktoken, typed out again


@lru_cache(maxsize=None)
def tiktoken_ranks(merges: int = 150) -> dict[bytes, int]:
    """A tiny tiktoken vocabulary: the 256 bytes in shuffled rank order, then ``merges`` byte pairs learned
    on :func:`corpus_lines` (most frequent first), then two whole words no merge sequence reaches."""
    import collections

    import regex

    order = list(range(256))
    random.Random(0).shuffle(order)
    ranks = {bytes([byte]): rank for rank, byte in enumerate(order)}
    words = collections.Counter(p.encode() for line in corpus_lines(80) for p in regex.findall(GLM4_SPLIT, line))
    spelled = {word: [bytes([byte]) for byte in word] for word in words}
    for _ in range(merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(spelled[word], spelled[word][1:]):
                pairs[pair] += count
        (left, right), _ = max(pairs.items(), key=lambda item: (item[1], item[0]))
        ranks[left + right] = len(ranks)
        for word, parts in spelled.items():
            out, i = [], 0
            while i < len(parts):
                pair = i + 1 < len(parts) and (parts[i], parts[i + 1]) == (left, right)
                out.append(left + right if pair else parts[i])
                i += 2 if pair else 1
            spelled[word] = out
    for word in (" people", "你好世界"):
        ranks.setdefault(word.encode(), len(ranks))
    return ranks


def tiktoken_encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's algorithm: split by :data:`GLM4_SPLIT`; a piece that is a token is taken whole, else
    its bytes are joined pairwise, always the adjacent pair whose join has the lowest rank first."""
    import regex

    ids = []
    for piece in regex.findall(GLM4_SPLIT, text):
        parts = [bytes([byte]) for byte in piece.encode()]
        if piece.encode() in ranks:
            parts = [piece.encode()]
        while len(parts) > 1:
            joins = [(ranks.get(a + b, len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(joins)
            if rank == len(ranks):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [ranks[part] for part in parts]
    return ids


def write_tiktoken_file(path: Path, ranks: dict[bytes, int]) -> Path:
    """``ranks`` as GLM-4's ``tokenizer.model``: one ``base64(token) rank`` line per token."""
    import base64

    path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items()))
    return path


def save_thudm_tokenizer(directory: Path, family: str, *sentencepiece_args) -> Path:
    """Convert a tiny THUDM ``tokenizer.model`` of ``family`` with :func:`sft.conversion.tokenizer.convert_tokenizer`.

    ChatGLM2/3 get :func:`sentencepiece_model` (``sentencepiece_args``), GLM-4 :func:`tiktoken_ranks`.
    Returns the directory of the converted tokenizer, ``directory/converted``.
    """
    from sft.conversion.tokenizer import convert_tokenizer

    source = Path(directory) / "thudm"
    source.mkdir(parents=True)
    if family == "glm4":
        write_tiktoken_file(source / "tokenizer.model", tiktoken_ranks())
    else:
        (source / "tokenizer.model").write_bytes(sentencepiece_model(*sentencepiece_args))
    convert_tokenizer(source, Path(directory) / "converted", family)
    return Path(directory) / "converted"
