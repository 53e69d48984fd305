"""Character-level tokenizers for tests, so expected ``input_ids`` can be written out literally.

:class:`FakeTokenizer` (in process): a character's id is its code point (``ord("a") == 97``);
special tokens are atomic and have the fixed ids below, past the last Unicode code point so
they can never collide with a character. ``merges`` adds multi-character tokens, to mimic a
subword tokenizer that merges text across a boundary.

:func:`save_char_tokenizer` (on disk): a real ``transformers`` tokenizer with one token per
character, for subprocess tests of ``python -m sft.data check --tokenizer DIR``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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
