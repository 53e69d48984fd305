"""ptuning on every text GLM architecture transformers ships, checked against a hand-written attention.

Per architecture (``tests/tiny_models.py``): the key/value layout read from the config, and
logits with a prefix against a float64 reference. The reference recomputes every layer's
attention output from that attention's weights -- projections, qk-norm, RoPE in each family's
convention, MLA's decompression of keys and values, DSA's indexer and top-k selection, the
prefix read from ``embedding.weight`` with the layout formula, and the mask -- and puts it in
place of transformers' own output; embeddings, norms, MLP and MoE, which a prefix does not touch,
run as transformers' modules in float64. Facts from transformers 5.24's modeling files:

* RoPE rotates pairs by ``position * theta**(-2i / rot_dim)``. ``glm``/``glm4`` pair dims
  ``(2i, 2i+1)`` of the first ``partial_rotary_factor`` of a head and keep them in place;
  ``glm4_moe`` pairs ``(i, i + rot_dim/2)``; MLA and the DSA indexer pair ``(2i, 2i+1)`` of the
  rotary part and write the rotated evens first, then the odds. (The order of the output matters:
  a prefix key meets queries in that layout.)
* ``glm4_moe`` with ``use_qk_norm`` RMS-normalizes each query and key head before RoPE.
* MLA: ``q = q_b_proj(rms(q_a_proj(x)))`` per head ``[no-RoPE | RoPE]``; ``kv_a_proj_with_mqa(x)``
  is ``[latent | one shared RoPE key]``, ``kv_b_proj(rms(latent))`` per head ``[key no-RoPE | value]``;
  scores are scaled by ``(qk_nope + qk_rope)**-0.5``.
* DSA indexer: ``q = wq_b(rms(q_a_proj(x)))`` per indexer head, ``k = LayerNorm(wk(x))`` shared,
  RoPE on their first ``qk_rope_head_dim`` dims; score of key ``s`` for query ``t`` is
  ``sum_h w[t, h] * relu(q[t, h] . k[s] / sqrt(d))`` with ``w = weights_proj(x) / sqrt(heads)``,
  masked like attention; each query keeps its ``index_topk`` best keys; ``shared`` layers reuse
  the previous full layer's choice. Prefix keys are always attended (``ptuning.injection``).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ptuning.encoder import PrefixConfig, PrefixEncoder
from ptuning.injection import InjectionError, attach_prefix
from ptuning.layout import KVLayout, kv_layout
from tests.ptuning.test_prefix import (
    GREEDY,
    IGNORE_INDEX,
    TOL,
    left_padded_prompts,
    max_diff_on_real_tokens,
    padded_batch,
    positions_from_zero,
    prompt_answer_labels,
    reference_mask,
)
from tests.tiny_models import ARCHITECTURES, tiny_config, tiny_model

P = 3
MASKS = ("causal", "prefix_lm")
PROMPT_LENGTH = [4, 3]  # prefix_lm prompts, counted over padded positions as labels are

# (layers, kv heads, key head size, value head size) of tests/tiny_models.py's configs
EXPECTED_LAYOUTS = {
    "glm": (2, 2, 8, 8),
    "glm4": (2, 2, 8, 8),
    "glm4_moe": (2, 2, 8, 8),
    "glm4_moe_lite": (2, 4, 12, 6),  # MLA: 4 heads, keys 8 + 4, values 6
    "glm_moe_dsa": (2, 4, 12, 6),
}


def tiny_encoder(model, seed: int = 1) -> PrefixEncoder:
    torch.manual_seed(seed)
    encoder = PrefixEncoder(PrefixConfig(P, kv_layout(model.config)))
    torch.nn.init.normal_(encoder.embedding.weight, std=1.0)  # large enough that the prefix matters
    return encoder


# --- The hand-written reference --------------------------------------------------------------------


def reference_prefix(encoder: PrefixEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``(L, kv_heads, P, head_dim)`` and values ``(L, kv_heads, P, value_head_dim)`` from the weights.

    Layer ``l`` owns features ``[l * W, (l + 1) * W)`` with ``W = kv_heads * (head_dim + value_head_dim)``:
    key dim ``d`` of head ``h`` at ``h * head_dim + d``, value dim ``d`` at
    ``kv_heads * head_dim + h * value_head_dim + d``.
    """
    layout = encoder.config.layout
    rows = encoder.embedding.weight.double()  # (P, kv_size)
    heads, dk, dv = layout.num_kv_heads, layout.head_dim, layout.value_head_dim
    keys = torch.empty(layout.num_layers, heads, rows.shape[0], dk, dtype=rows.dtype)
    values = torch.empty(layout.num_layers, heads, rows.shape[0], dv, dtype=rows.dtype)
    width = heads * (dk + dv)
    for layer in range(layout.num_layers):
        for head in range(heads):
            key_start = layer * width + head * dk
            value_start = layer * width + heads * dk + head * dv
            keys[layer, head] = rows[:, key_start : key_start + dk]
            values[layer, head] = rows[:, value_start : value_start + dv]
    return keys, values


def _linear(x: torch.Tensor, layer) -> torch.Tensor:
    out = x @ layer.weight.T
    return out + layer.bias if layer.bias is not None else out


def _rms(x: torch.Tensor, norm) -> torch.Tensor:
    return norm.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)


def _angles(positions: torch.Tensor, theta: float, rot_dim: int) -> torch.Tensor:
    """``(B, T)`` -> ``(B, T, rot_dim / 2)``: the angle of each rotated pair."""
    return positions.double()[..., None] * theta ** (-torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)


def _rope(x: torch.Tensor, angle: torch.Tensor, style: str) -> torch.Tensor:
    """Rotate the first ``2n`` dims of ``x`` by ``angle`` (``n`` per pair, broadcast); keep the rest.

    ``style``: ``interleaved`` pairs (2i, 2i+1) in place; ``half`` pairs (i, i+n); ``evens_first``
    pairs (2i, 2i+1) and writes the rotated evens, then the odds.
    """
    n = angle.shape[-1]
    rotary, rest = x[..., : 2 * n], x[..., 2 * n :]
    a, b = (rotary[..., :n], rotary[..., n:]) if style == "half" else (rotary[..., 0::2], rotary[..., 1::2])
    cos, sin = angle.cos(), angle.sin()
    first, second = a * cos - b * sin, b * cos + a * sin
    if style == "interleaved":
        rotated = torch.stack([first, second], dim=-1).flatten(-2)
    else:
        rotated = torch.cat([first, second], dim=-1)
    return torch.cat([rotated, rest], dim=-1)


def _gqa_qkv(attn, x, positions):
    """``(B, heads, T, hd)``, ``(B, kv_heads, T, hd)`` twice, and the score scale."""
    cfg = attn.config
    batch, length, _ = x.shape
    head_dim = cfg.head_dim

    def heads(t):
        return t.view(batch, length, -1, head_dim).transpose(1, 2)

    q, k, v = (heads(_linear(x, proj)) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    if getattr(attn, "q_norm", None) is not None:
        q, k = _rms(q, attn.q_norm), _rms(k, attn.k_norm)
    rot_dim = int(head_dim * cfg.rope_parameters["partial_rotary_factor"])
    angle = _angles(positions, cfg.rope_parameters["rope_theta"], rot_dim)[:, None]  # (B, 1, T, rot/2)
    style = "half" if cfg.model_type == "glm4_moe" else "interleaved"
    return _rope(q, angle, style), _rope(k, angle, style), v, head_dim**-0.5


def _mla_qkv(attn, x, positions):
    """Multi-head latent attention: ``(B, heads, T, nope + rope)`` queries and keys, ``(B, heads, T, v)`` values."""
    cfg = attn.config
    assert getattr(cfg, "rope_interleave", True), "the reference writes the evens-first RoPE of rope_interleave"
    batch, length, _ = x.shape
    nope, rope, heads = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.num_attention_heads
    q = _linear(_rms(_linear(x, attn.q_a_proj), attn.q_a_layernorm), attn.q_b_proj)
    q = q.view(batch, length, heads, nope + rope).transpose(1, 2)
    latent, k_rope = _linear(x, attn.kv_a_proj_with_mqa).split([cfg.kv_lora_rank, rope], dim=-1)
    kv = _linear(_rms(latent, attn.kv_a_layernorm), attn.kv_b_proj).view(batch, length, heads, nope + cfg.v_head_dim)
    k_nope, v = kv.transpose(1, 2).split([nope, cfg.v_head_dim], dim=-1)
    angle = _angles(positions, cfg.rope_parameters["rope_theta"], rope)  # (B, T, rope/2)
    q = torch.cat([q[..., :nope], _rope(q[..., nope:], angle[:, None], "evens_first")], dim=-1)
    k_rope = _rope(k_rope, angle, "evens_first")[:, None].expand(-1, heads, -1, -1)  # one key shared by the heads
    return q, torch.cat([k_nope, k_rope], dim=-1), v, (nope + rope) ** -0.5


def _dsa_selection(attn, x, positions, allowed) -> torch.Tensor:
    """``(B, T, K)``: the keys DSA's indexer keeps for each query."""
    cfg, indexer = attn.config, attn.indexer
    batch, length, _ = x.shape
    heads, dim = cfg.index_n_heads, cfg.index_head_dim
    angle = _angles(positions, cfg.rope_parameters["rope_theta"], cfg.qk_rope_head_dim)  # (B, T, rope/2)
    q = _linear(_rms(_linear(x, attn.q_a_proj), attn.q_a_layernorm), indexer.wq_b).view(batch, length, heads, dim)
    q = _rope(q, angle[:, :, None], "evens_first")
    k = torch.nn.functional.layer_norm(_linear(x, indexer.wk), (dim,), indexer.k_norm.weight, indexer.k_norm.bias,
                                       indexer.k_norm.eps)
    k = _rope(k, angle, "evens_first")  # (B, K, dim)
    scores = torch.relu(torch.einsum("bthd,bsd->bths", q, k) / math.sqrt(dim))
    weights = _linear(x, indexer.weights_proj) / math.sqrt(heads)  # (B, T, heads)
    index = torch.einsum("bth,bths->bts", weights, scores).masked_fill(~allowed, float("-inf"))
    best = index.topk(min(cfg.index_topk, index.shape[-1]), dim=-1).indices
    return torch.zeros_like(allowed).scatter(-1, best, True)


def reference_attention(attn, x, positions, allowed, prefix, state: dict, sparse: bool) -> torch.Tensor:
    """``(B, T, hidden)`` -> the attention block's ``(B, T, hidden)`` output, from its weights."""
    mla = hasattr(attn, "kv_b_proj")
    q, k, v, scale = (_mla_qkv if mla else _gqa_qkv)(attn, x, positions)
    if sparse and hasattr(attn, "indexer"):  # DSA; "shared" layers have indexer None and reuse the last choice
        if attn.indexer is not None:
            state["selected"] = _dsa_selection(attn, x, positions, allowed)
        allowed = allowed & state["selected"]
    allowed = allowed[:, None]  # (B, 1, T, K)
    if prefix is not None:
        batch, layer = x.shape[0], attn.layer_idx
        k = torch.cat([prefix[0][layer].expand(batch, -1, -1, -1), k], dim=2)  # (B, kv_heads, P + K, dk)
        v = torch.cat([prefix[1][layer].expand(batch, -1, -1, -1), v], dim=2)
        always = torch.ones(*allowed.shape[:-1], prefix[0].shape[2], dtype=torch.bool)
        allowed = torch.cat([always, allowed], dim=-1)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    # A left-pad query without a prefix sees no key at all: give it zeros, not NaN.
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    out = (probs @ v).transpose(1, 2).flatten(2)  # (B, T, heads * v_dim)
    return _linear(out, attn.o_proj)


def reference_logits(model, input_ids, padding_mask, prefix=None, prompt_length=None, sparse=True) -> torch.Tensor:
    """Logits in float64, every layer's attention output replaced by :func:`reference_attention`."""
    twin = copy.deepcopy(model).double()
    if getattr(twin.config, "n_routed_experts", None):
        twin.set_experts_implementation("eager")  # grouped_mm, the default, has no float64
    positions = positions_from_zero(padding_mask)
    bound = None if prompt_length is None else torch.tensor(prompt_length)
    allowed = reference_mask(padding_mask, bound, 0)  # (B, T, T)
    state: dict = {}

    def replace(attn, args, kwargs, output):
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return (reference_attention(attn, x, positions, allowed, prefix, state, sparse), *output[1:])

    for layer in twin.model.layers:
        layer.self_attn.register_forward_hook(replace, with_kwargs=True)
    with torch.no_grad():
        return twin(input_ids=input_ids, attention_mask=padding_mask, position_ids=positions).logits


# --- 1. Layouts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_layout_is_read_from_the_config(arch):
    layout = kv_layout(tiny_config(arch))
    assert (layout.num_layers, layout.num_kv_heads, layout.head_dim, layout.value_head_dim) == EXPECTED_LAYOUTS[arch]
    layers, heads, key_dim, value_dim = EXPECTED_LAYOUTS[arch]
    assert layout.kv_size == layers * heads * (key_dim + value_dim)


@pytest.mark.parametrize("arch", ["glm4_moe_lite", "glm_moe_dsa"])
def test_mla_configs_head_dim_is_not_the_key_size(arch):
    # Their configs' head_dim is the RoPE part (glm4_moe_lite maps it to qk_rope_head_dim): a prefix
    # sized by it would not fit the keys, and attaching says so in one line.
    config = tiny_config(arch)
    assert config.head_dim == config.qk_rope_head_dim == 4
    model = tiny_model(arch)
    wrong = KVLayout(num_layers=2, num_kv_heads=4, head_dim=config.head_dim, hidden_size=32)
    with pytest.raises(InjectionError, match="4 key/value heads of key size 12 and value size 6, where the prefix "
                                             "layout read from the config has 4, 4 and 4"):
        attach_prefix(model, PrefixEncoder(PrefixConfig(P, wrong)), "causal")


def test_checkpoint_json_of_equal_key_and_value_sizes_is_unchanged():
    stored = {"pre_seq_len": 4, "layout": {"num_layers": 2, "num_kv_heads": 2, "head_dim": 8, "hidden_size": 32},
              "prefix_projection": False, "prefix_hidden_size": None, "dropout": 0.0, "mask": "causal"}
    config = PrefixConfig.from_dict(stored)  # what every checkpoint before MLA support holds
    assert config.layout == kv_layout(tiny_config("glm")) and config.to_dict() == stored
    mla = PrefixConfig(4, kv_layout(tiny_config("glm4_moe_lite"))).to_dict()
    assert mla["layout"] == {"num_layers": 2, "num_kv_heads": 4, "head_dim": 12, "hidden_size": 32, "value_head_dim": 6}
    assert PrefixConfig.from_dict(mla).layout == kv_layout(tiny_config("glm4_moe_lite"))


def test_encoder_splits_each_layer_into_keys_then_values():
    layout = kv_layout(tiny_config("glm_moe_dsa"))
    encoder = PrefixEncoder(PrefixConfig(P, layout))
    with torch.no_grad():
        encoder.embedding.weight.copy_(torch.arange(P * layout.kv_size, dtype=torch.float32).view(P, layout.kv_size))
    keys, values = encoder()
    assert keys.shape == (2, 4, P, 12) and values.shape == (2, 4, P, 6)
    expected_keys, expected_values = reference_prefix(encoder)
    assert torch.equal(keys.double(), expected_keys) and torch.equal(values.double(), expected_values)


# --- 2. Logits against the reference ------------------------------------------------------------------


def prefix_logits(arch: str, mask_type: str, padding: str, backend: str = "sdpa"):
    """Our logits with a prefix, the reference's, and references that must differ from them:
    without the prefix, and (for prefix_lm) with a causal mask."""
    model = tiny_model(arch, backend)
    encoder = tiny_encoder(model)
    input_ids, padding_mask = padded_batch(padding)
    prompt_length = PROMPT_LENGTH if mask_type == "prefix_lm" else None
    labels = prompt_answer_labels(input_ids, padding_mask, prompt_length or [0, 0])
    prefix = reference_prefix(encoder)
    expected = reference_logits(model, input_ids, padding_mask, prefix, prompt_length)
    controls = {"no prefix": reference_logits(model, input_ids, padding_mask, None, prompt_length)}
    if prompt_length is not None:
        controls["causal"] = reference_logits(model, input_ids, padding_mask, prefix)
    attach_prefix(model, encoder, mask_type)
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=padding_mask, labels=labels).logits
    return ours.double(), expected, controls, padding_mask


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("mask_type", MASKS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prefix_matches_reference(arch, mask_type, padding):
    ours, expected, controls, padding_mask = prefix_logits(arch, mask_type, padding)
    assert max_diff_on_real_tokens(ours, expected, padding_mask) <= TOL
    for control in controls.values():  # the prefix, and the bidirectional prompt, matter
        assert max_diff_on_real_tokens(expected, control, padding_mask) > 1e-3


@pytest.mark.parametrize("arch", ["glm4_moe_lite", "glm_moe_dsa"])
def test_prefix_matches_reference_with_eager_attention(arch):
    ours, expected, _, padding_mask = prefix_logits(arch, "prefix_lm", "left", backend="eager")
    assert max_diff_on_real_tokens(ours, expected, padding_mask) <= TOL


def test_dsa_top_k_selection_is_applied_under_the_prefix_wrapper():
    # transformers applies DSA's selection itself only for backends named eager/sdpa; ours is ptuning_sdpa.
    model = tiny_model("glm_moe_dsa")
    encoder = tiny_encoder(model)
    input_ids, padding_mask = padded_batch("none")
    dense = reference_logits(model, input_ids, padding_mask, reference_prefix(encoder), sparse=False)
    sparse = reference_logits(model, input_ids, padding_mask, reference_prefix(encoder))
    attach_prefix(model, encoder, "causal")
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=padding_mask).logits.double()
    assert max_diff_on_real_tokens(ours, sparse, padding_mask) <= TOL
    assert max_diff_on_real_tokens(ours, dense, padding_mask) > 1e-3  # 4 of 7 keys: the selection matters


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mask_only_attach_matches_the_base_model(arch, backend):
    # What LoRA and full fine-tuning run with: no prefix, our mask. For DSA this also shows that the
    # wrapper applies the indexer's selection as transformers does for its own eager/sdpa.
    model = tiny_model(arch, backend)
    input_ids, padding_mask = padded_batch("right")
    with torch.no_grad():
        base = model(input_ids=input_ids, attention_mask=padding_mask).logits
        attach_prefix(model, None, "causal")
        ours = model(input_ids=input_ids, attention_mask=padding_mask).logits
    assert max_diff_on_real_tokens(ours, base, padding_mask) <= TOL


# --- 3. Training and generation -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_layers_keys_and_values_get_a_gradient(arch):
    model = tiny_model(arch)
    model.requires_grad_(False)
    encoder = tiny_encoder(model)
    attach_prefix(model, encoder, "prefix_lm")
    model.train()
    input_ids, padding_mask = padded_batch("right")
    labels = prompt_answer_labels(input_ids, padding_mask, PROMPT_LENGTH)
    model(input_ids=input_ids, attention_mask=padding_mask, labels=labels).loss.backward()
    layout = encoder.config.layout
    per_layer = encoder.embedding.weight.grad.view(P, layout.num_layers, layout.key_size + layout.value_size)
    for part in per_layer.split([layout.key_size, layout.value_size], dim=-1):
        assert (part.abs().amax(dim=(0, 2)) > 0).all()  # keys, then values, of every layer


@pytest.mark.parametrize("mask_type", MASKS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_generation_logits_equal_full_recompute(arch, mask_type):
    model = tiny_model(arch)
    attach_prefix(model, tiny_encoder(model), mask_type)
    input_ids, padding_mask = left_padded_prompts()
    prompt_width = input_ids.shape[1]
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids, attention_mask=padding_mask, output_logits=True, return_dict_in_generate=True, **GREEDY
        )
        cached = torch.stack(out.logits, dim=1)  # (B, new, V)
        tokens = out.sequences[:, :-1]  # every fed token at once; labels mark the answer (prefix_lm)
        full_mask = torch.cat([padding_mask, torch.ones_like(tokens[:, prompt_width:])], dim=1)
        labels = tokens.masked_fill(full_mask == 0, IGNORE_INDEX)
        labels[:, :prompt_width] = IGNORE_INDEX
        recompute = model(input_ids=tokens, attention_mask=full_mask, labels=labels, use_cache=False).logits
    assert (cached - recompute[:, prompt_width - 1 :]).abs().max().item() <= TOL
