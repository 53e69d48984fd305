"""Tiny random models of every text GLM architecture transformers ships, for the architecture tests.

Each has 2 layers, hidden size 32 and 4 attention heads. The MoE families have 4 routed experts
(2 per token) and a shared expert, with the first layer dense and the second MoE; the
multi-head latent attention families (``glm4_moe_lite``, ``glm_moe_dsa``) have keys of
8 + 4 (no-RoPE + RoPE) and values of 6 per head, so keys and values differ in size; the DSA
indexer keeps 4 keys per query, so it selects on sequences longer than 4, and its second layer
reuses the first layer's selection (``indexer_types``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Glm4Config,
    Glm4MoeConfig,
    Glm4MoeLiteConfig,
    GlmConfig,
    GlmMoeDsaConfig,
    PreTrainedModel,
)

from sft.embedded import DEFAULT_MODEL_DIR
from sft.models import DEFAULTS_FILE

ARCHITECTURES = ("glm", "glm4", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa")
MOE = ("glm4_moe", "glm4_moe_lite", "glm_moe_dsa")

_MOE = dict(moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1)
_MLA = dict(kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)


def tiny_config(arch: str, vocab_size: int = 64, pad_token_id: int = 0, eos_token_id: int = 1):
    """A 2-layer random config of ``arch`` (a ``config.model_type``)."""
    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=256, pad_token_id=pad_token_id,
                  eos_token_id=eos_token_id, bos_token_id=None)
    gqa = dict(num_key_value_heads=2, head_dim=8)
    if arch == "glm":
        return GlmConfig(**common, **gqa)
    if arch == "glm4":
        return Glm4Config(**common, **gqa)
    if arch == "glm4_moe":  # GLM-4.5 has attention biases; qk-norm is an option of the family
        return Glm4MoeConfig(**common, **gqa, **_MOE, first_k_dense_replace=1, attention_bias=True, use_qk_norm=True)
    if arch == "glm4_moe_lite":  # first layer dense by default
        return Glm4MoeLiteConfig(**common, **_MOE, **_MLA, num_key_value_heads=4)
    if arch == "glm_moe_dsa":
        return GlmMoeDsaConfig(**common, **_MOE, **_MLA, num_key_value_heads=4, first_k_dense_replace=1,
                               index_topk=4, index_head_dim=8, index_n_heads=2, indexer_types=["full", "shared"])
    raise ValueError(f"expected one of {', '.join(ARCHITECTURES)}, found {arch!r}")


def tiny_model(arch: str, backend: str = "sdpa", seed: int = 0, **config) -> PreTrainedModel:
    """A random ``arch`` model in eval mode with ``backend`` attention."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **config)).eval()
    model.set_attn_implementation(backend)
    return model


def build_tiny_model_dir(
    directory: Path, arch: str = "glm", mask: str = "prefix_lm", template: str = "chatglm3", seed: int = 0
) -> Path:
    """Save a random tiny ``arch`` model, the embedded tokenizer, GLM-4's three stop ids and ``sft_defaults.json``
    (``mask``, ``template``) into ``directory``. With the ``glm4`` template the tokenizer gains GLM-4's ``<sop>``
    (the embedded one, ChatGLM3-style, spells it ``sop``); the vocabulary follows the tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    if template == "glm4":
        tokenizer.add_tokens(["<sop>"], special_tokens=True)
    model = tiny_model(arch, seed=seed, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    stops = [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(["<|user|>", "<|observation|>"])]
    model.generation_config = GenerationConfig(eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    (directory / DEFAULTS_FILE).write_text(json.dumps({"mask": mask, "template": template}), encoding="utf-8")
    return directory
