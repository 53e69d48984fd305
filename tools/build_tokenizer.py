"""Train the embedded model's SentencePiece tokenizer and save it in transformers' format.

    python -m tools.build_tokenizer --output_dir sft/embedded/glm-zh-tiny

Writes ``tokenizer.model`` (SentencePiece unigram), ``tokenizer.json`` (the same model for the
``tokenizers`` library) and ``tokenizer_config.json``. Decoding is lossless: no dummy prefix,
no whitespace folding, identity normalisation (Chinese punctuation survives), byte fallback for
unseen characters and ``"\\n"`` as its own piece. The only exception is U+2581 (``▁``), which
SentencePiece uses for the space and so decodes as a space.

Ids 0-3 are ``<unk> <s> </s> <pad>``, then the GLM control tokens (:data:`GLM_SPECIAL_TOKENS`)
and ``"\\n"``. The tokenizer adds no special tokens on its own (``add_special_tokens=True``
adds nothing): the project's prompt templates write every one of them.

Ordinary text never yields a GLM control token: they are SentencePiece ``CONTROL`` pieces (trained
as user-defined symbols, so the vocabulary is what training makes of them, then retyped), and in
``tokenizer.json`` the unigram model never picks them. A control token written out in a text is read
as that token (``[gMASK]sop<|user|>``), as transformers does for special tokens, but ``sop`` and
``eop`` only as whole words: ``people`` stays ``people``.
"""

from __future__ import annotations

import io
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece as spm
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, HfArgumentParser

from sft.embedded import DEFAULT_MODEL_DIR
from tools import corpus

logger = logging.getLogger(__name__)

BASE_SPECIAL_TOKENS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}  # ids 0, 1, 2, 3
GLM_SPECIAL_TOKENS = ["[gMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
NEWLINE = "\n"
SPACE_PIECE = "\u2581"  # SentencePiece's visible space
UNREACHABLE_SCORE = -1e6  # a unigram score no segmentation of text picks over its characters or bytes


@dataclass
class TokenizerArguments(corpus.RecordsArguments):
    output_dir: str = field(default=str(DEFAULT_MODEL_DIR), metadata={"help": "Where the tokenizer files are written."})
    vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size, special and byte pieces included."})
    character_coverage: float = field(
        default=0.9995, metadata={"help": "Share of corpus characters given their own piece; the rest fall back to bytes."}
    )
    max_piece_length: int = field(
        default=6, metadata={"help": "Longest piece in characters (keeps pieces word-like, not template phrases)."}
    )
    seed: int = field(default=1234, metadata={"help": "Seed of the corpus and of SentencePiece's sampling."})


def training_lines(args: TokenizerArguments) -> list[str]:
    """Corpus lines for SentencePiece (the pretraining sources of :mod:`tools.corpus`), shuffled."""
    lines: list[str] = []
    for source in corpus.general_sources() + corpus.record_sources(args, args.seed):
        docs = source.load()
        logger.info("tokenizer corpus: %s, %d documents", source.name, len(docs))
        lines += [line for doc in docs for line in doc.split(NEWLINE)]
    lines = [line for line in lines if line.strip()]
    random.Random(args.seed).shuffle(lines)
    return lines


def train_sentencepiece(lines: list[str], args: TokenizerArguments) -> bytes:
    """Train a unigram SentencePiece model on ``lines``; returns the serialised model."""
    spm.set_random_generator_seed(args.seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="unigram",
        vocab_size=args.vocab_size,
        character_coverage=args.character_coverage,
        max_sentencepiece_length=args.max_piece_length,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        user_defined_symbols=GLM_SPECIAL_TOKENS + [NEWLINE],
        max_sentence_length=1 << 16,
        input_sentence_size=0,
        num_threads=2,
        minloglevel=2,
    )
    return model.getvalue()


def mark_control(model_proto: bytes) -> bytes:
    """``model_proto`` with the GLM special tokens retyped ``CONTROL``: SentencePiece then never makes
    them out of text (a user-defined symbol it would: ``people`` -> ``p eop le``). Ids stay as trained."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
    specials = set(GLM_SPECIAL_TOKENS)
    for piece in proto.pieces:
        if piece.piece in specials:
            piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL
            piece.score = 0.0
    return proto.SerializeToString()


def to_hf_tokenizer(model_proto: bytes) -> Tokenizer:
    """The same unigram model for the ``tokenizers`` library, with no prefix space added or stripped.

    Control pieces get a score the unigram model never prefers to spelling the text out; they are
    added tokens instead (``sop``/``eop`` match whole words only)."""
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    vocab = [(sp.id_to_piece(i), UNREACHABLE_SCORE if sp.is_control(i) else sp.get_score(i))
             for i in range(sp.get_piece_size())]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=SPACE_PIECE, prepend_scheme="never", split=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(Regex(SPACE_PIECE), " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    specials = list(BASE_SPECIAL_TOKENS.values()) + GLM_SPECIAL_TOKENS
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True, single_word=t.isalnum()) for t in specials]
    )
    tokenizer.add_tokens([AddedToken(NEWLINE, normalized=False, special=False)])
    for token in specials + [NEWLINE]:
        assert tokenizer.token_to_id(token) == sp.piece_to_id(token), token
    return tokenizer


def tokenizer_config() -> dict:
    """``tokenizer_config.json``: the generic fast tokenizer, no automatic special tokens."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{f"{role}_token": token for role, token in BASE_SPECIAL_TOKENS.items()},
        "additional_special_tokens": GLM_SPECIAL_TOKENS,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "padding_side": "left",
    }


def save(model_proto: bytes, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    model_proto = mark_control(model_proto)
    (output_dir / "tokenizer.model").write_bytes(model_proto)
    to_hf_tokenizer(model_proto).save(str(output_dir / "tokenizer.json"))
    (output_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n")
    (output_dir / "special_tokens_map.json").unlink(missing_ok=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses()
    lines = training_lines(args)
    logger.info("training SentencePiece on %d lines (%d characters)", len(lines), sum(map(len, lines)))
    output_dir = Path(args.output_dir)
    save(train_sentencepiece(lines, args), output_dir)
    tok = AutoTokenizer.from_pretrained(output_dir)
    logger.info("saved tokenizer (%d tokens) to %s", len(tok), output_dir)


if __name__ == "__main__":
    main()
