"""THUDM's tokenizers as transformers-native fast tokenizers: :func:`convert_tokenizer`.

THUDM ship ``tokenization_chatglm.py`` (remote code) and a ``tokenizer.model``. What the ids rest
on, read from that file in ChatGLM2-6B, ChatGLM3-6B and glm-4-9b-chat (facts only; none of their
code is here):

* **ChatGLM2/ChatGLM3** (``SPTokenizer``): ``tokenizer.model`` is a SentencePiece model (BPE, as
  the ``tokenizer.json`` THUDM later added to chatglm3-6b shows; unigram models convert too) of
  64789 pieces: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, then the byte pieces, so ``"\\n"`` is
  ``<0x0A>`` 13. Text is ``sp.encode(text)``, so every string encoded on its own starts with
  SentencePiece's dummy prefix ``▁`` (30910): ``encode("\\n") == [30910, 13]``. The GLM tokens
  get the ids after the pieces, in this order: ``[MASK] [gMASK] [sMASK] sop eop`` (64789-64793),
  and in ChatGLM3 ``<|system|> <|user|> <|assistant|> <|observation|>`` (64794-64797).
  ``add_special_tokens=True`` puts ``[gMASK] sop`` in front (``get_prefix_tokens``); eos is
  ``</s>``, pad and unk ``<unk>``, there is no bos. Plain text never yields a GLM token: ChatGLM2
  sends all text to SentencePiece (after transformers splits off ``<unk>`` and ``</s>``), and
  ChatGLM3 splits text on its special tokens only when built
  with ``encode_special_tokens=True`` (which its own chat template needs), sending each piece
  between them to SentencePiece on its own, dummy prefix included.
* **GLM-4** (``ChatGLM4Tokenizer``): ``tokenizer.model`` holds ``base64(token bytes) rank`` lines
  for tiktoken, with cl100k's split pattern (:data:`GLM4_PATTERN`); 151329 ranks, then
  ``<|endoftext|> [MASK] [gMASK] [sMASK] <sop> <eop> <|system|> <|user|> <|assistant|>
  <|observation|> <|begin_of_image|> <|end_of_image|> <|begin_of_video|> <|end_of_video|>``
  (151329-151342). Its ``tokenizer_config.json`` registers those as special added tokens, so
  transformers splits them out of text; eos and pad are ``<|endoftext|>``.

What :func:`convert_tokenizer` writes (``tokenizer.json``, ``tokenizer_config.json``) loads with
``AutoTokenizer.from_pretrained`` and no remote code, and gives those ids:

* the SentencePiece model becomes the same model in the ``tokenizers`` library (BPE merges ranked
  by piece score, or the unigram pieces and scores) with SentencePiece's normalisation as a
  normaliser (its character map, whitespace folding, ``" " -> "▁"``, the dummy prefix) and byte
  fallback; the tiktoken ranks become a byte-level BPE whose merges are rebuilt from the ranks;
* the family's tokens are special added tokens at THUDM's ids. Text between them is encoded on its
  own, dummy prefix included, as THUDM's split does; ``sop`` and ``eop`` are ordinary words too,
  so they only count as tokens where they stand alone (never inside ``people`` or ``Aesop``).
  Text that must never become a control token is encoded with ``split_special_tokens=True``, which
  is THUDM's ChatGLM2/3 default;
* ``add_special_tokens=True`` prepends ``[gMASK] sop`` (GLM-4: ``[gMASK] <sop>``) as THUDM's
  tokenizers do; the chat template (jinja) renders what ``build_prompt`` (ChatGLM2),
  ``build_chat_input`` (ChatGLM3) and GLM-4's chat template do for system/user/assistant turns.

Known differences, all on text spelling a token: ``<s>``, ``</s>`` and ``<unk>`` in text are those
tokens (SentencePiece alone spells them out); a standalone ``sop``/``eop`` word is the token;
in a unigram model (not ChatGLM's), text spelling a byte piece such as ``<0x0A>`` is that piece.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sft.conversion.thudm import FAMILIES, ConversionError

if TYPE_CHECKING:
    from sentencepiece.sentencepiece_model_pb2 import ModelProto
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

SPACE = "\u2581"  # SentencePiece's visible space, also its dummy prefix
_ROLES = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
_CHATGLM = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "chatglm2": _CHATGLM,
    "chatglm3": _CHATGLM + _ROLES,
    "glm4": ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", *_ROLES,
             "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"),
}
"""The tokens each family puts after its text vocabulary, in id order."""
PREFIX_TOKENS = {"chatglm2": ("[gMASK]", "sop"), "chatglm3": ("[gMASK]", "sop"), "glm4": ("[gMASK]", "<sop>")}
WORD_TOKENS = frozenset({"sop", "eop"})  # English words as well: matched in text only where they stand alone
GLM4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""GLM-4's (and cl100k's) split pattern: BPE merges never cross the pieces it cuts text into."""

_UNIGRAM, _BPE = 1, 2  # SentencePiece TrainerSpec.model_type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4  # SentencePiece piece types


def convert_tokenizer(source: Path, output_dir: Path, family: str) -> None:
    """Write ``source/tokenizer.model`` of a THUDM ``family`` checkpoint as a fast tokenizer into ``output_dir``.

    Raises:
        ConversionError: unknown family, or a missing or unreadable ``tokenizer.model``.
    """
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ConversionError(f"tokenizer family: expected one of {', '.join(FAMILIES)}, found {family!r}")
    path = Path(source) / "tokenizer.model"
    if not path.is_file():
        raise ConversionError(f"{source}: expected THUDM's tokenizer.model, found none")
    if family == "glm4":
        tokenizer = tiktoken_tokenizer(read_tiktoken_ranks(path))
        roles, dummy_prefix = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, False
    else:
        proto = read_sentencepiece(path)
        tokenizer = sentencepiece_tokenizer(proto, path)
        unk = proto.pieces[proto.trainer_spec.unk_id].piece
        eos = proto.pieces[proto.trainer_spec.eos_id].piece
        roles = {"eos_token": eos, "unk_token": unk, "pad_token": unk}
        dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    add_family_tokens(tokenizer, family, roles["eos_token"], path)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        chat_template=chat_template(family, dummy_prefix),
        padding_side="left",
        clean_up_tokenization_spaces=False,
        extra_special_tokens=list(SPECIAL_TOKENS[family]),
        **roles,
    )
    fast.save_pretrained(str(output_dir))
    logger.info("converted the %s tokenizer (%d tokens) to %s", family, len(fast), output_dir)


def add_family_tokens(tokenizer: Tokenizer, family: str, eos: str, where: Path | str = "tokenizer.model") -> None:
    """Add the family's tokens after the text vocabulary, and its prefix for ``add_special_tokens=True``.

    A pair of texts becomes ``prefix A B eos``, as THUDM's ``build_inputs_with_special_tokens``.

    Raises:
        ConversionError: the text vocabulary already has a piece spelled like one of the tokens
            (a fast tokenizer has one id per spelling; THUDM's keeps both).
    """
    from tokenizers import AddedToken, processors

    first = tokenizer.get_vocab_size(with_added_tokens=False)
    tokens = SPECIAL_TOKENS[family]
    pieces = {token: tokenizer.token_to_id(token) for token in tokens}
    clashes = [f"{token} (piece {index})" for token, index in pieces.items() if index is not None]
    if clashes:
        raise ConversionError(f"{where}: expected no text piece spelled like a {family} special token, found "
                              f"{', '.join(clashes)}")
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False, single_word=token in WORD_TOKENS) for token in tokens]
    )
    assert [tokenizer.token_to_id(token) for token in tokens] == list(range(first, first + len(tokens)))
    prefix = PREFIX_TOKENS[family]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=[*prefix, "$A"],
        pair=[*prefix, "$A", "$B:1", f"{eos}:1"],
        special_tokens=[(token, tokenizer.token_to_id(token)) for token in dict.fromkeys([*prefix, eos])],
    )


# --- SentencePiece (ChatGLM2, ChatGLM3) ---------------------------------------------------------------


def read_sentencepiece(path: Path) -> ModelProto:
    """The ``ModelProto`` in ``path``."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    try:
        return sentencepiece_model_pb2.ModelProto.FromString(path.read_bytes())
    except DecodeError:
        raise ConversionError(f"{path}: expected a SentencePiece model, found unreadable content") from None


def sentencepiece_tokenizer(proto: ModelProto, where: Path | str = "tokenizer.model") -> Tokenizer:
    """A ``tokenizers`` model that encodes text as ``SentencePieceProcessor.encode`` does with ``proto``.

    Control pieces (``<unk>``, ``<s>``, ``</s>``) are special added tokens; user-defined pieces are
    cut out whole before the model, as SentencePiece keeps them whole.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    if trainer.treat_whitespace_as_suffix:
        raise ConversionError(f"{where}: expected a SentencePiece model with whitespace as prefix, found it as suffix")
    pieces = list(proto.pieces)
    unk = pieces[trainer.unk_id].piece
    user_defined = [p.piece for p in pieces if p.type == _USER_DEFINED]
    if trainer.model_type == _BPE:
        vocab = {p.piece: index for index, p in enumerate(pieces)}
        model = models.BPE(vocab, _bpe_merges(pieces), unk_token=unk, fuse_unk=True,
                           byte_fallback=trainer.byte_fallback, ignore_merges=bool(user_defined))
    elif trainer.model_type == _UNIGRAM:
        model = models.Unigram([(p.piece, p.score) for p in pieces], unk_id=trainer.unk_id,
                               byte_fallback=trainer.byte_fallback)
    else:
        raise ConversionError(f"{where}: expected a SentencePiece BPE or unigram model, found model type "
                              f"{trainer.model_type}")
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = _sentencepiece_normalizer(spec)
    if user_defined:
        pattern = "|".join(re.escape(piece) for piece in sorted(user_defined, key=len, reverse=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    steps = [decoders.Replace(SPACE, " ")] if spec.escape_whitespaces else []
    steps += [decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(steps)
    controls = [p.piece for p in pieces if p.type in (_CONTROL, _UNKNOWN)]
    tokenizer.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in controls])
    return tokenizer


def _bpe_merges(pieces: list) -> list[tuple[str, str]]:
    """SentencePiece BPE joins the adjacent pair whose joined piece scores highest: merges in that order."""
    index = {p.piece: i for i, p in enumerate(pieces) if p.type in (_NORMAL, _USER_DEFINED)}
    ranked = []
    for i, p in enumerate(pieces):
        if p.type != _NORMAL:
            continue
        for cut in range(1, len(p.piece)):
            left, right = p.piece[:cut], p.piece[cut:]
            if left in index and right in index:
                ranked.append((-p.score, i, index[left], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def _sentencepiece_normalizer(spec: ModelProto.NormalizerSpec):
    """SentencePiece's ``Normalize``: character map, then whitespace folding, escaping, dummy prefix."""
    from tokenizers import Regex, normalizers

    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # only " " counts; newlines and tabs stay
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    space = SPACE if spec.escape_whitespaces else " "
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(space))  # per text between added tokens, like THUDM's split
    return normalizers.Sequence(steps)


# --- tiktoken (GLM-4) ---------------------------------------------------------------------------------


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """``{token bytes: rank}`` from lines ``base64(token) rank``; ranks must be 0..n-1."""
    ranks: dict[bytes, int] = {}
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise ConversionError(f"{path}:{number}: expected 'base64-token rank', "
                                      f"found {line[:60].decode('latin-1')!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ConversionError(f"{path}: expected ranks 0..{len(ranks) - 1}, each once, found gaps or repeats")
    missing = set(range(256)) - {token[0] for token in ranks if len(token) == 1}
    if missing:
        raise ConversionError(f"{path}: expected a token for each of the 256 bytes, found none for {len(missing)}")
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest for chr(256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + n) for n, byte in enumerate(others)}}


def tiktoken_tokenizer(ranks: dict[bytes, int]) -> Tokenizer:
    """A byte-level BPE that encodes text as tiktoken does with ``ranks`` and :data:`GLM4_PATTERN`.

    tiktoken joins the adjacent pair whose joined token has the lowest rank; a merge list ordered by
    that rank does the same. A piece of text that is itself a token is taken whole (``ignore_merges``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    alphabet = bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(alphabet[byte] for byte in token)

    ranked = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                ranked.append((rank, ranks[left], spell(left), spell(right)))
    merges = [(left, right) for *_, left, right in sorted(ranked)]
    tokenizer = Tokenizer(models.BPE({spell(token): rank for token, rank in ranks.items()}, merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


# --- chat templates -----------------------------------------------------------------------------------


def chat_template(family: str, dummy_prefix: bool = True) -> str:
    """The family's prompt as a jinja chat template (system/user/assistant messages).

    * ``chatglm2``: ``build_prompt``'s rounds ``[Round i]\\n\\n问：q\\n\\n答：r\\n\\n`` after
      ``[gMASK]sop``; the generation prompt is the open round's ``\\n\\n答：``.
    * ``chatglm3``: ``[gMASK]sop`` then ``<|role|>`` + metadata + ``"\\n"`` + content per message
      (``build_chat_input``); content written after a space stands for the dummy prefix its own
      ``sp.encode`` gives it. The generation prompt is ``<|assistant|>``.
    * ``glm4``: ``[gMASK]<sop>`` then ``<|role|>`` + metadata + ``"\\n"`` + content; generation prompt
      ``<|assistant|>``. (GLM-4's tool-use system prompt is not rendered.)
    """
    if family == "chatglm2":  # text after a block tag goes in {{ }}: transformers' jinja trims the newline after one
        return (
            "[gMASK]sop{% for message in messages %}"
            "{% if message['role'] == 'user' %}"
            "{{ '[Round ' ~ (loop.index0 // 2 + 1) ~ ']\\n\\n问：' ~ message['content'] }}"
            "{% elif message['role'] == 'assistant' %}{{ '\\n\\n答：' ~ message['content'] ~ '\\n\\n' }}"
            "{% else %}{{ raise_exception('chatglm2 has user and assistant messages only') }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}{{ '\\n\\n答：' }}{% endif %}"
        )
    prefix = "[gMASK]sop" if family == "chatglm3" else "[gMASK]<sop>"
    space = " " if family == "chatglm3" and dummy_prefix else ""
    return (
        prefix + "{% for message in messages %}<|{{ message['role'] }}|>{{ message.get('metadata', '') }}\n"
        "{% if message['content'] %}" + space + "{{ message['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
