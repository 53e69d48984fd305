"""Tiny random THUDM-format checkpoints and a float64 ChatGLM2-style forward written from their weights.

The checkpoints follow the published layout of ChatGLM2-6B / ChatGLM3-6B / glm-4-9b (config
fields, ``transformer.*`` key names, ``.bin`` or ``.safetensors`` shards with their index), at 2
layers, hidden 64, 4 query heads of 16 dims, 2 key/value groups, SwiGLU 96. No THUDM code is used:
the reference below is written from the architecture's description, independently of
``sft.conversion`` and of transformers' Glm:

* RMSNorm before attention and MLP, residual from the block input, a final RMSNorm;
* fused ``query_key_value`` rows ``[queries; keys; values]``, query head ``h`` reads group
  ``h // (heads / groups)``; a prefix (P-tuning v2) adds un-rotated keys/values seen by every query;
* rotary on the first ``kv_channels / 2`` dims of each head, adjacent pairs ``(2i, 2i+1)`` rotated by
  ``position * base ** (-2i / (kv_channels / 2))``; ``base = 10000 * rope_ratio`` (ChatGLM3,
  GLM-4), or base 10000 with positions divided by ``rope_ratio`` (ChatGLM2-6B-32k);
* causal softmax attention scaled by ``1 / sqrt(kv_channels)``; MLP ``silu(gate) * up`` from
  ``dense_h_to_4h = [gate; up]``; ``output_layer`` for the logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

INV_FREQ = "transformer.rotary_pos_emb.inv_freq"
PREFIX = "transformer.prefix_encoder."

TINY_CONFIG = {  # the fields and flags of THUDM's config.json, at toy sizes
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "kv_channels": 16,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "ffn_hidden_size": 96,
    "padded_vocab_size": 128,
    "seq_length": 256,
    "layernorm_epsilon": 1e-5,
    "rmsnorm": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "attention_softmax_in_fp32": True,
    "fp32_residual_connection": False,
    "original_rope": True,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "quantization_bit": 0,
    "pre_seq_len": None,
    "prefix_projection": False,
    "tie_word_embeddings": False,
    "use_cache": True,
    "torch_dtype": "float32",
    "eos_token_id": 2,
    "pad_token_id": 0,
}

TOKENIZER_CONFIGS = {  # what tells the families apart besides the vocabulary size
    "chatglm2": {"tokenizer_class": "ChatGLMTokenizer", "remove_space": False, "do_lower_case": False,
                 "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}},
    "chatglm3": {"tokenizer_class": "ChatGLMTokenizer", "remove_space": False, "do_lower_case": False,
                 "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
                 "chat_template": "{% for m in messages %}<|{{ m['role'] }}|>\n {{ m['content'] }}{% endfor %}"
                                  "{% if add_generation_prompt %}<|assistant|>{% endif %}"},
    "glm4": {"tokenizer_class": "ChatGLM4Tokenizer", "remove_space": False, "do_lower_case": False,
             "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]}},
}


def thudm_inv_freq(kv_channels: int, base: float = 10000.0) -> torch.Tensor:
    rotary = kv_channels // 2
    return 1.0 / (base ** (torch.arange(0, rotary, 2, dtype=torch.float32) / rotary))


def thudm_state(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights under THUDM's names, in THUDM's order."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, std: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    hidden, ffn, vocab = config["hidden_size"], config["ffn_hidden_size"], config["padded_vocab_size"]
    heads, groups, head_dim = config["num_attention_heads"], config["multi_query_group_num"], config["kv_channels"]
    qkv = (heads + 2 * groups) * head_dim
    state = {"transformer.embedding.word_embeddings.weight": rand(vocab, hidden, std=1.0),
             INV_FREQ: thudm_inv_freq(head_dim)}
    for layer in range(config["num_layers"]):
        pre = f"transformer.encoder.layers.{layer}."
        state[pre + "input_layernorm.weight"] = 1 + rand(hidden)
        state[pre + "self_attention.query_key_value.weight"] = rand(qkv, hidden)
        if config.get("add_qkv_bias"):
            state[pre + "self_attention.query_key_value.bias"] = rand(qkv)
        state[pre + "self_attention.dense.weight"] = rand(hidden, heads * head_dim)
        state[pre + "post_attention_layernorm.weight"] = 1 + rand(hidden)
        state[pre + "mlp.dense_h_to_4h.weight"] = rand(2 * ffn, hidden)
        state[pre + "mlp.dense_4h_to_h.weight"] = rand(hidden, ffn)
    state["transformer.encoder.final_layernorm.weight"] = 1 + rand(hidden)
    state["transformer.output_layer.weight"] = rand(vocab, hidden)
    return state


def thudm_prefix(config: dict, pre_seq_len: int = 3, seed: int = 5) -> dict[str, torch.Tensor]:
    """A ChatGLM2 P-tuning prefix (no projection) as ``ptuning/main.py`` saves it."""
    width = config["num_layers"] * 2 * config["multi_query_group_num"] * config["kv_channels"]
    generator = torch.Generator().manual_seed(seed)
    return {PREFIX + "embedding.weight": torch.randn(pre_seq_len, width, generator=generator)}


def save_shards(directory: Path, state: dict[str, torch.Tensor], fmt: str, shards: int) -> None:
    """THUDM's file names: ``pytorch_model[-0000i-of-0000n].bin`` or ``model[-0000i-of-0000n].safetensors``
    (+ index), keys in order, split into ``shards`` contiguous runs."""
    keys = list(state)
    stem, suffix = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")
    runs = [keys[i * len(keys) // shards:(i + 1) * len(keys) // shards] for i in range(shards)]
    weight_map = {}
    for number, run in enumerate(runs, start=1):
        name = f"{stem}.{suffix}" if shards == 1 else f"{stem}-{number:05d}-of-{shards:05d}.{suffix}"
        part = {key: state[key].contiguous() for key in run}
        if fmt == "bin":
            torch.save(part, directory / name)
        else:
            save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(run, name))
    if shards > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": weight_map}
        (directory / f"{stem}.{suffix}.index.json").write_text(json.dumps(index), encoding="utf-8")


def write_thudm_checkpoint(directory: Path, *, family: str = "chatglm3", fmt: str = "bin", shards: int = 2,
                           seed: int = 0, state: dict | None = None, drop: tuple[str, ...] = (),
                           **config_changes) -> tuple[dict, dict]:
    """Write config.json, weights and the family's tokenizer_config.json; returns ``(config, state)``.

    ``config_changes`` set config fields, ``drop`` removes some; ``state`` replaces the random weights.
    """
    config = {key: value for key, value in {**TINY_CONFIG, **config_changes}.items() if key not in drop}
    state = thudm_state(config, seed) if state is None else state
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIGS[family]), encoding="utf-8")
    save_shards(directory, state, fmt, shards)
    return config, state


# --- float64 reference -----------------------------------------------------------------------------


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def thudm_logits(state: dict, config: dict, family: str, input_ids: torch.Tensor,
                 prefix: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T, vocab)`` float64 logits of a THUDM-named checkpoint; ``prefix`` is the P-tuning embedding rows
    ``(P, layers * 2 * groups * kv_channels)``; real tokens take positions ``0..T-1``."""
    w = {key: tensor.double() for key, tensor in state.items()}
    batch, length = input_ids.shape
    heads, groups, head_dim = config["num_attention_heads"], config["multi_query_group_num"], config["kv_channels"]
    eps, ratio, rotary = config["layernorm_epsilon"], float(config.get("rope_ratio", 1)), head_dim // 2
    base, stretch = (10000.0, ratio) if family == "chatglm2" else (10000.0 * ratio, 1.0)
    angle = (torch.arange(length, dtype=torch.float64) / stretch)[:, None] * (
        base ** (-torch.arange(0, rotary, 2, dtype=torch.float64) / rotary))  # (T, rotary/2)
    cos, sin = angle.cos()[None, :, None], angle.sin()[None, :, None]  # (1, T, 1, rotary/2)

    def rope(x: torch.Tensor) -> torch.Tensor:  # (B, T, n, head_dim): rotate pairs (2i, 2i+1) of the first half
        even, odd = x[..., 0:rotary:2], x[..., 1:rotary:2]
        pairs = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)
        return torch.cat([pairs, x[..., rotary:]], dim=-1)

    virtual = 0 if prefix is None else prefix.shape[0]
    # (P, layers, key/value, groups, head_dim): ChatGLM2's view of the prefix rows.
    prefix_kv = None if prefix is None else prefix.double().view(virtual, config["num_layers"], 2, groups, head_dim)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = torch.cat([torch.ones(length, virtual, dtype=torch.bool), causal], dim=1)  # (T, P + T)
    group_of_head = torch.arange(heads) // (heads // groups)
    x = w["transformer.embedding.word_embeddings.weight"][input_ids]  # (B, T, hidden)
    for layer in range(config["num_layers"]):
        pre = f"transformer.encoder.layers.{layer}."
        h = _rms_norm(x, w[pre + "input_layernorm.weight"], eps)
        qkv = h @ w[pre + "self_attention.query_key_value.weight"].T
        if config.get("add_qkv_bias"):
            qkv = qkv + w[pre + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([heads * head_dim, groups * head_dim, groups * head_dim], dim=-1)
        q = rope(q.view(batch, length, heads, head_dim))
        k = rope(k.view(batch, length, groups, head_dim))
        v = v.view(batch, length, groups, head_dim)
        if prefix_kv is not None:
            k = torch.cat([prefix_kv[:, layer, 0].expand(batch, -1, -1, -1), k], dim=1)  # (B, P + T, G, hd)
            v = torch.cat([prefix_kv[:, layer, 1].expand(batch, -1, -1, -1), v], dim=1)
        k, v = k[:, :, group_of_head], v[:, :, group_of_head]  # (B, P + T, H, hd)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        attn = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, heads * head_dim)
        x = x + attn @ w[pre + "self_attention.dense.weight"].T
        h = _rms_norm(x, w[pre + "post_attention_layernorm.weight"], eps)
        gate, up = (h @ w[pre + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(gate) * up) @ w[pre + "mlp.dense_4h_to_h.weight"].T
    x = _rms_norm(x, w["transformer.encoder.final_layernorm.weight"], eps)
    return x @ w["transformer.output_layer.weight"].T
