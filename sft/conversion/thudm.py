"""THUDM ChatGLM2/ChatGLM3/GLM-4 checkpoints: which ones we take, their family, and the config they become.

What the mapping relies on, read from THUDM's ``modeling_chatglm.py`` of ChatGLM2-6B, ChatGLM3-6B
and glm-4-9b (facts only; none of their code is here):

* Pre-norm blocks with RMSNorm (``rmsnorm``, ``post_layer_norm``: a final norm;
  ``apply_residual_connection_post_layernorm`` false), a SwiGLU MLP whose ``dense_h_to_4h``
  output is ``[gate; up]`` (silu on the first half), no bias on ``dense``/MLP
  (``add_bias_linear`` false), a bias on the fused ``query_key_value`` when ``add_qkv_bias``.
  transformers' ``GlmForCausalLM`` is that block, with ``q/k/v_proj`` instead of the fused one.
* Multi-query attention: ``multi_query_group_num`` key/value groups of ``kv_channels`` dims;
  ``query_key_value`` rows are ``[queries (heads * kv_channels); keys (groups * kv_channels);
  values (groups * kv_channels)]`` and query head ``h`` reads group ``h // (heads / groups)``,
  which is what ``num_key_value_heads`` does.
* Rotary embedding on the first half of each head's dims (``RotaryEmbedding(kv_channels // 2)``),
  rotating adjacent pairs ``(2i, 2i + 1)`` by ``position * base ** (-2i / (kv_channels / 2))``:
  GLM's interleaved rotary with ``partial_rotary_factor`` 0.5. ChatGLM3 and GLM-4 use
  ``base = 10000 * rope_ratio`` (glm-4-9b-chat: 500, -1m: 10000, chatglm3-6b-32k: 50).
  ChatGLM2-6B-32k's ``rope_ratio`` (16) means something else: positions are divided by it
  (position interpolation), which is transformers' ``linear`` rope with ``factor`` rope_ratio.
  The stored ``rotary_pos_emb.inv_freq`` buffer is always computed with base 10000, whatever
  ``rope_ratio`` says (the ratio is applied when the cos/sin table is built), so it checks the
  rotary width, not the base.
* ``output_layer`` is its own ``nn.Linear``, never tied to the word embeddings.

Refused, one line each: ChatGLM-6B (v1: 2-D positions, GeLU, LayerNorm; recognised by
``position_encoding_2d``/``inner_hidden_size`` in its config, which no later release has),
quantized checkpoints (``quantization_bit``; int8 weights or ``weight_scale`` keys are refused by
:mod:`sft.conversion.weights`), GLM-4V (``vision_config``), a transformers GLM directory (nothing
to convert), anything else without THUDM's ``model_type`` ``chatglm``, and a config whose block
differs from the one above.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from sft.errors import UserError

if TYPE_CHECKING:
    from transformers import GlmConfig

FAMILIES = ("chatglm2", "chatglm3", "glm4")  # each is also the name of its prompt template
GLM4_VOCAB = 151552  # padded_vocab_size of every GLM-4 release (ChatGLM2/3: 65024)

# The ids a reply ends on, as THUDM's chat code passes them to generate(): ChatGLM2 stops at
# </s>; ChatGLM3 at </s>, <|user|> and <|observation|> (SentencePiece's 64789 pieces, then
# [MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|>); GLM-4 at
# <|endoftext|>, <|user|>, <|observation|> (its generation_config.json).
STOP_TOKENS: dict[str, dict[str, int]] = {
    "chatglm2": {"</s>": 2},
    "chatglm3": {"</s>": 2, "<|user|>": 64795, "<|observation|>": 64797},
    "glm4": {"<|endoftext|>": 151329, "<|user|>": 151336, "<|observation|>": 151338},
}

SIZE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels",
               "multi_query_group_num", "padded_vocab_size", "seq_length", "layernorm_epsilon")
# THUDM's ChatGLMConfig defaults for a field config.json leaves out, and the value the mapping needs.
BLOCK_FIELDS = {
    "rmsnorm": (True, True),
    "post_layer_norm": (True, True),
    "apply_residual_connection_post_layernorm": (False, False),
    "add_bias_linear": (False, False),
    "multi_query_attention": (False, True),
}
TOKENIZER_FILES = ("tokenizer_config.json", "tokenization_chatglm.py", "special_tokens_map.json")
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")  # ChatGLM3's, not ChatGLM2's


class ConversionError(UserError):
    """A source directory that is not a THUDM checkpoint this converter can map, or a conversion that cannot go on."""


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: expected JSON, found unreadable content ({err})") from None


def read_config(source: Path) -> dict:
    """``source/config.json`` if it describes a THUDM checkpoint the mapping covers; else one refusal line."""
    path = source / "config.json"
    config = _read_json(path)
    if config is None:
        raise ConversionError(f"--source: expected a THUDM checkpoint directory with config.json, found none in "
                              f"{source}")
    _refuse_other_models(config, path)
    missing = [name for name in SIZE_FIELDS if name not in config]
    if missing:
        raise ConversionError(f"{path}: expected THUDM fields {', '.join(SIZE_FIELDS)}, found no {', '.join(missing)}")
    for name, (default, needed) in BLOCK_FIELDS.items():
        if config.get(name, default) != needed:
            raise ConversionError(f"{path}: expected {name} {json.dumps(needed)} (what the mapping "
                                  f"assumes), found {json.dumps(config.get(name, default))}")
    if config["num_attention_heads"] % config["multi_query_group_num"]:
        raise ConversionError(f"{path}: expected num_attention_heads divisible by multi_query_group_num, found "
                              f"{config['num_attention_heads']} and {config['multi_query_group_num']}")
    ratio = config.get("rope_ratio", 1)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
        raise ConversionError(f"{path}: expected a positive number for rope_ratio, found {json.dumps(ratio)}")
    return config


def _refuse_other_models(config: dict, path: Path) -> None:
    model_type = config.get("model_type")
    if "position_encoding_2d" in config or "inner_hidden_size" in config:
        raise ConversionError(f"{path}: expected a ChatGLM2/ChatGLM3/GLM-4 checkpoint, found ChatGLM-6B v1 "
                              "(position_encoding_2d/inner_hidden_size: 2-D positions, GeLU, LayerNorm), "
                              "an architecture transformers' Glm does not have")
    if model_type in ("glm", "glm4") and "num_hidden_layers" in config:
        raise ConversionError(f"{path}: expected a THUDM checkpoint, found a transformers model directory "
                              f"(model_type {model_type}): nothing to convert, use it as it is")
    if model_type != "chatglm":
        raise ConversionError(f"{path}: expected a THUDM ChatGLM2/ChatGLM3/GLM-4 checkpoint (model_type "
                              f"\"chatglm\"), found model_type {json.dumps(model_type)}")
    if config.get("quantization_bit"):
        raise ConversionError(f"{path}: expected a checkpoint in float16/bfloat16/float32, found a quantized one "
                              f"(quantization_bit {config['quantization_bit']}): convert the unquantized release")
    if "vision_config" in config:
        raise ConversionError(f"{path}: expected a text-only ChatGLM2/ChatGLM3/GLM-4 checkpoint, found GLM-4V "
                              "(vision_config)")


def check_family(family: str) -> None:
    """The one check of ``--family``: ``auto`` or one of :data:`FAMILIES`."""
    if family != "auto" and family not in FAMILIES:
        raise ConversionError(f"--family: expected auto or one of {', '.join(FAMILIES)}, found {family!r}")


def detect_family(source: Path, family: str = "auto") -> str:
    """``chatglm2``, ``chatglm3`` or ``glm4`` for a THUDM checkpoint directory; ``family`` other than auto wins.

    GLM-4: ``padded_vocab_size`` 151552 or the ``ChatGLM4Tokenizer`` class in the tokenizer files.
    ChatGLM3 and ChatGLM2 share vocabulary size and SentencePiece model; ChatGLM3's tokenizer adds
    the role tokens, so one of them (``<|user|>``, ...) in ``tokenization_chatglm.py``,
    ``tokenizer_config.json`` or ``special_tokens_map.json`` means ChatGLM3, and tokenizer files
    without any ChatGLM2. Without any of those files the family cannot be told: pass it.
    """
    check_family(family)
    if family != "auto":
        return family
    config = _read_json(source / "config.json") or {}
    texts = [(source / name).read_text(encoding="utf-8", errors="replace")
             for name in TOKENIZER_FILES if (source / name).is_file()]
    if config.get("padded_vocab_size") == GLM4_VOCAB or any("ChatGLM4Tokenizer" in text for text in texts):
        return "glm4"
    if not texts:
        raise ConversionError(f"{source}: expected tokenizer files ({', '.join(TOKENIZER_FILES)}) to tell "
                              "chatglm2 from chatglm3, found none: pass --family chatglm2|chatglm3|glm4")
    return "chatglm3" if any(token in text for text in texts for token in ROLE_TOKENS) else "chatglm2"


def rope_parameters(config: dict, family: str) -> dict:
    """transformers' ``rope_parameters`` for THUDM's rotary (see the module docstring for ``rope_ratio``)."""
    ratio = float(config.get("rope_ratio", 1))
    if family == "chatglm2" and ratio != 1:  # ChatGLM2-6B-32k: positions / rope_ratio
        return {"rope_type": "linear", "factor": ratio, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    return {"rope_type": "default", "rope_theta": 10000.0 * ratio, "partial_rotary_factor": 0.5}


def glm_config(config: dict, family: str, dtype: str) -> GlmConfig:
    """The ``GlmConfig`` of a checked THUDM config; ``dtype`` is the weights' (e.g. ``bfloat16``)."""
    from transformers import GlmConfig

    return GlmConfig(
        vocab_size=config["padded_vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["ffn_hidden_size"],
        num_hidden_layers=config["num_layers"],
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config["multi_query_group_num"],
        head_dim=config["kv_channels"],
        max_position_embeddings=config["seq_length"],
        rms_norm_eps=config["layernorm_epsilon"],
        attention_bias=bool(config.get("add_qkv_bias", False)),
        attention_dropout=config.get("attention_dropout", 0.0),
        rope_parameters=rope_parameters(config, family),
        tie_word_embeddings=False,
        pad_token_id=config.get("pad_token_id", 0),
        eos_token_id=stop_token_ids(family),
        bos_token_id=None,
        dtype=dtype,
        architectures=["GlmForCausalLM"],
    )


def stop_token_ids(family: str) -> list[int]:
    return list(STOP_TOKENS[family].values())


def check_stop_tokens(tokenizer, family: str, where: Path) -> None:
    """The converted tokenizer must give each stop token the id the family's generation config uses."""
    for token, wanted in STOP_TOKENS[family].items():
        found = tokenizer.convert_tokens_to_ids(token)
        if found != wanted:
            raise ConversionError(f"{where}: expected {family} stop token {token} at id {wanted}, found id {found} "
                                  "in the converted tokenizer (is --family right?)")
