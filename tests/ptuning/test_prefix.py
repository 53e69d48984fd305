"""ptuning: prefix encoder, prefix injection and masks, checked against peft and a hand-written GLM.

Every parity test compares our injected model with an independent computation of the same
thing: peft 0.21's prefix tuning (prefix stored in the KV cache) and a from-the-weights GLM
forward written below, which reads the prefix straight from ``embedding.weight`` with the
ChatGLM2 layout formula and builds its own masks. Models are tiny random GLMs in fp32.
"""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from peft import PrefixTuningConfig, get_peft_model
import transformers
from transformers import DynamicCache, GlmForCausalLM

from ptuning import injection
from ptuning.encoder import PrefixConfig, PrefixEncoder
from ptuning.injection import INJECTION_KWARG, InjectionError, attach_prefix, find_cache
from ptuning.layout import kv_layout
from tests import tiny_models
from tests.tiny_models import tiny_config

P = 3  # virtual tokens
TOL = 1e-5  # max abs logit difference allowed in fp32
IGNORE_INDEX = -100
BACKENDS = ("sdpa", "eager")
PADDINGS = ("none", "right", "left")


def tiny_model(backend: str = "sdpa", seed: int = 0) -> GlmForCausalLM:
    return tiny_models.tiny_model("glm", backend, seed)


def tiny_encoder(model, *, projection: bool = False, dropout: float = 0.0, seed: int = 1) -> PrefixEncoder:
    torch.manual_seed(seed)
    config = PrefixConfig(
        P,
        kv_layout(model.config),
        prefix_projection=projection,
        prefix_hidden_size=24 if projection else None,
        dropout=dropout,
    )
    encoder = PrefixEncoder(config)
    torch.nn.init.normal_(encoder.embedding.weight, std=1.0)  # large enough that the prefix matters
    return encoder


def padded_batch(padding: str, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T)`` token ids and padding mask; with padding, row 1 has 5 real tokens and 2 pads.

    ``"right"`` pads the end (training batches), ``"left"`` the start (generation batches),
    where positions from 0 and masked padded keys matter.
    """
    torch.manual_seed(seed)
    input_ids = torch.randint(2, 64, (2, 7))
    padding_mask = torch.ones_like(input_ids)
    pads = {"none": slice(0, 0), "right": slice(5, 7), "left": slice(0, 2)}[padding]
    input_ids[1, pads] = 0
    padding_mask[1, pads] = 0
    return input_ids, padding_mask


def positions_from_zero(padding_mask: torch.Tensor) -> torch.Tensor:
    return (padding_mask.cumsum(-1) - 1).clamp(min=0)


def max_diff_on_real_tokens(a: torch.Tensor, b: torch.Tensor, padding_mask: torch.Tensor) -> float:
    return (a - b)[padding_mask.bool()].abs().max().item()


def prompt_answer_labels(input_ids: torch.Tensor, padding_mask: torch.Tensor, prompt_length: list[int]) -> torch.Tensor:
    """Labels supervising every real token from ``prompt_length[b]`` on (the answer)."""
    labels = input_ids.masked_fill(~padding_mask.bool(), IGNORE_INDEX)
    for row, length in enumerate(prompt_length):
        labels[row, :length] = IGNORE_INDEX
    return labels


# --- Hand-written GLM reference ------------------------------------------------------------------
# Facts from transformers/models/glm/modeling_glm.py (5.x): q/k/v projections carry a bias; RoPE
# covers the first partial_rotary_factor (0.5) of each head; GLM's rotate_half is interleaved and
# cos/sin are repeat_interleave(2)'d, i.e. dims (2i, 2i+1) form one pair rotated by angle
# pos * theta**(-2i/rot_dim) -- written here as a complex multiplication. GQA repeats each kv head
# for consecutive query heads. gate_up_proj holds [gate | up]; MLP = down(up * silu(gate)).
# Prefix keys are the raw embedding rows (no RoPE), before the real keys, visible to all queries.


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float, rot_dim: int) -> torch.Tensor:
    """``x`` ``(B, heads, T, head_dim)``; rotate pairs of the first ``rot_dim`` dims."""
    freqs = theta ** (-torch.arange(0, rot_dim, 2, dtype=x.dtype) / rot_dim)  # (rot/2,)
    angle = positions[:, None, :, None].to(x.dtype) * freqs  # (B, 1, T, rot/2)
    pairs = torch.view_as_complex(x[..., :rot_dim].reshape(*x.shape[:-1], rot_dim // 2, 2).contiguous())
    rotated = torch.view_as_real(pairs * torch.polar(torch.ones_like(angle), angle)).flatten(-2)
    return torch.cat([rotated, x[..., rot_dim:]], dim=-1)


def reference_prefix(encoder: PrefixEncoder) -> torch.Tensor:
    """Prefix keys/values ``(L, 2, kv_heads, P, head_dim)`` read from the encoder's weights.

    Feature ``((l * 2 + kv) * kv_heads + h) * head_dim + d`` of virtual token ``p`` is the
    ChatGLM2 layout; with projection the rows first go through Linear -> tanh -> Linear.
    """
    layout = encoder.config.layout
    rows = encoder.embedding.weight.double()  # (P, kv_size)
    if encoder.config.prefix_projection:
        first, second = encoder.trans[0], encoder.trans[2]
        hidden = torch.tanh(rows @ first.weight.double().T + first.bias.double())
        rows = hidden @ second.weight.double().T + second.bias.double()
    out = torch.empty(layout.num_layers, 2, layout.num_kv_heads, rows.shape[0], layout.head_dim, dtype=rows.dtype)
    for layer in range(layout.num_layers):
        for kv in range(2):
            for head in range(layout.num_kv_heads):
                start = ((layer * 2 + kv) * layout.num_kv_heads + head) * layout.head_dim
                out[layer, kv, head] = rows[:, start : start + layout.head_dim]
    return out


def reference_mask(padding_mask: torch.Tensor, prompt_length: torch.Tensor | None, num_virtual: int) -> torch.Tensor:
    """``(B, T, num_virtual + T)`` bool: causal (or bidirectional inside the prompt), no padded keys."""
    batch, length = padding_mask.shape
    allowed = torch.zeros(batch, length, length, dtype=torch.bool)
    for row in range(batch):
        for query in range(length):
            for key in range(length):
                in_prompt = prompt_length is not None and query < prompt_length[row] and key < prompt_length[row]
                allowed[row, query, key] = bool(padding_mask[row, key]) and (key <= query or in_prompt)
    return torch.cat([torch.ones(batch, length, num_virtual, dtype=torch.bool), allowed], dim=-1)


def reference_logits(model, input_ids, padding_mask, prefix=None, prompt_length=None) -> torch.Tensor:
    """GLM forward in float64 from ``model``'s weights; positions count real tokens from 0."""
    cfg = model.config
    weights = {name: tensor.double() for name, tensor in model.state_dict().items()}
    batch, length = input_ids.shape
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    rot_dim = int(head_dim * cfg.rope_parameters["partial_rotary_factor"])
    theta = cfg.rope_parameters["rope_theta"]
    positions = positions_from_zero(padding_mask)
    num_virtual = 0 if prefix is None else prefix.shape[3]
    allowed = reference_mask(padding_mask, prompt_length, num_virtual)[:, None]  # (B, 1, T, P + T)

    def linear(x, name, bias=False):
        out = x @ weights[name + ".weight"].T
        return out + weights[name + ".bias"] if bias else out

    x = weights["model.embed_tokens.weight"][input_ids]  # (B, T, hidden)
    for layer in range(cfg.num_hidden_layers):
        pre = f"model.layers.{layer}."
        h = _rms_norm(x, weights[pre + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = linear(h, pre + "self_attn.q_proj", True).view(batch, length, heads, head_dim).transpose(1, 2)
        k = linear(h, pre + "self_attn.k_proj", True).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        v = linear(h, pre + "self_attn.v_proj", True).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        q, k = _rope(q, positions, theta, rot_dim), _rope(k, positions, theta, rot_dim)
        if prefix is not None:
            k = torch.cat([prefix[layer, 0].expand(batch, -1, -1, -1), k], dim=2)  # (B, kv, P + T, hd)
            v = torch.cat([prefix[layer, 1].expand(batch, -1, -1, -1), v], dim=2)
        k = k.repeat_interleave(heads // kv_heads, dim=1)  # (B, heads, P + T, hd)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        # A left-pad query without a prefix sees no key at all: give it zeros, not NaN.
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
        attn = probs @ v  # (B, heads, T, hd)
        x = x + linear(attn.transpose(1, 2).reshape(batch, length, heads * head_dim), pre + "self_attn.o_proj")
        h = _rms_norm(x, weights[pre + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        gate, up = linear(h, pre + "mlp.gate_up_proj").chunk(2, dim=-1)
        x = x + linear(up * torch.nn.functional.silu(gate), pre + "mlp.down_proj")
    x = _rms_norm(x, weights["model.norm.weight"], cfg.rms_norm_eps)
    return linear(x, "lm_head")  # (B, T, vocab)


# --- 1. Parity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_prefix_matches_peft_prefix_tuning(backend, padding):
    # peft 0.21 handles GLM with GQA. Its layout, from _prepare_prompt_learning_config and get_prompt:
    # the config has num_key_value_heads and head_dim, so token_dim = kv_heads * head_dim (16) and
    # num_attention_heads = kv_heads (2); the embedding is (P, num_layers * 2 * token_dim) and
    # get_prompt views it as (B, P, L * 2, kv_heads, head_dim), permutes to (L * 2, B, kv_heads, P, hd)
    # and splits it in pairs -> layer l gets key 2l, value 2l + 1. So feature
    # ((l * 2 + kv) * kv_heads + h) * head_dim + d is ours too: the weights copy over unchanged.
    model = tiny_model(backend)
    twin = get_peft_model(
        copy.deepcopy(model), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=False)
    ).eval()
    encoder = tiny_encoder(model)
    peft_config = twin.active_peft_config
    assert (peft_config.token_dim, peft_config.num_attention_heads) == (2 * 8, 2)
    assert twin.prompt_encoder["default"].embedding.weight.shape == encoder.embedding.weight.shape
    with torch.no_grad():
        twin.prompt_encoder["default"].embedding.weight.copy_(encoder.embedding.weight)
    attach_prefix(model, encoder, "causal")
    input_ids, padding_mask = padded_batch(padding)
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=padding_mask).logits
        # peft keeps the prefix in the KV cache and adds P to explicit position_ids
        # (_adjust_prompt_learning_kwargs), so pass positions - P to have real tokens start at 0.
        shifted = positions_from_zero(padding_mask) - P
        theirs = twin(input_ids=input_ids, attention_mask=padding_mask, position_ids=shifted).logits
        unshifted = twin(input_ids=input_ids, attention_mask=padding_mask).logits
    assert max_diff_on_real_tokens(ours, theirs, padding_mask) <= TOL
    # Real tokens at positions P.. (peft's default) is measurably different: the offset matters.
    assert max_diff_on_real_tokens(ours, unshifted, padding_mask) > 1e-3


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_prefix_matches_reference(backend, padding):
    model = tiny_model(backend)
    encoder = tiny_encoder(model)
    input_ids, padding_mask = padded_batch(padding)
    with torch.no_grad():
        expected = reference_logits(model, input_ids, padding_mask, reference_prefix(encoder))
        without_prefix = reference_logits(model, input_ids, padding_mask)
        attach_prefix(model, encoder, "causal")
        ours = model(input_ids=input_ids, attention_mask=padding_mask).logits
    assert max_diff_on_real_tokens(ours.double(), expected, padding_mask) <= TOL
    assert max_diff_on_real_tokens(expected, without_prefix, padding_mask) > 1e-2  # the prefix matters


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_lm_with_labels_matches_reference(backend, padding):
    model = tiny_model(backend)
    encoder = tiny_encoder(model)
    input_ids, padding_mask = padded_batch(padding)
    prompt_length = [4, 3]  # counted over padded positions, as the labels are
    labels = prompt_answer_labels(input_ids, padding_mask, prompt_length)
    with torch.no_grad():
        prefix = reference_prefix(encoder)
        expected = reference_logits(model, input_ids, padding_mask, prefix, torch.tensor(prompt_length))
        causal = reference_logits(model, input_ids, padding_mask, prefix)
        attach_prefix(model, encoder, "prefix_lm")
        ours = model(input_ids=input_ids, attention_mask=padding_mask, labels=labels).logits
    assert max_diff_on_real_tokens(ours.double(), expected, padding_mask) <= TOL
    assert max_diff_on_real_tokens(expected, causal, padding_mask) > 1e-3  # the bidirectional prompt matters


def test_projected_prefix_matches_reference():
    model = tiny_model()
    encoder = tiny_encoder(model, projection=True)
    input_ids, padding_mask = padded_batch("right")
    with torch.no_grad():
        expected = reference_logits(model, input_ids, padding_mask, reference_prefix(encoder))
        attach_prefix(model, encoder, "causal")
        ours = model(input_ids=input_ids, attention_mask=padding_mask).logits
    assert max_diff_on_real_tokens(ours.double(), expected, padding_mask) <= TOL


# Mask only (no prefix) equals the base model: tests/ptuning/test_architectures.py, every architecture.


# --- 2. Prefix-LM behaviour ----------------------------------------------------------------------


def _final_hidden(model, input_ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, output_hidden_states=True, **kwargs).hidden_states[-1]


@pytest.mark.parametrize("mask_type", ["prefix_lm", "causal"])
def test_prompt_token_sees_later_prompt_tokens_only_with_prefix_lm(mask_type):
    model = tiny_model()
    attach_prefix(model, tiny_encoder(model), mask_type)
    input_ids, padding_mask = padded_batch("none")
    labels = prompt_answer_labels(input_ids, padding_mask, [4, 4])  # prompt = tokens 0..3
    later_prompt = input_ids.clone()
    later_prompt[:, 2] = (later_prompt[:, 2] + 7) % 62 + 2
    answer = input_ids.clone()
    answer[:, 5] = (answer[:, 5] + 7) % 62 + 2

    def hidden(ids):
        return _final_hidden(model, ids, attention_mask=padding_mask, labels=labels)

    reference = hidden(input_ids)
    prompt_change = (hidden(later_prompt) - reference)[:, :2].abs().max().item()  # tokens 0 and 1
    answer_change = (hidden(answer) - reference)[:, :4].abs().max().item()  # the whole prompt
    assert answer_change == 0.0
    if mask_type == "prefix_lm":
        assert prompt_change > 1e-3
    else:
        assert prompt_change == 0.0


@pytest.mark.parametrize("mask_type", ["prefix_lm", "causal"])
def test_generation_prefill_is_bidirectional_only_with_prefix_lm(mask_type):
    model = tiny_model()
    attach_prefix(model, tiny_encoder(model), mask_type)
    prompt = torch.randint(2, 64, (1, 5), generator=torch.Generator().manual_seed(3))
    changed = prompt.clone()
    changed[0, 3] = (changed[0, 3] + 7) % 62 + 2
    with torch.no_grad():  # no labels and no cache: a generation prefill
        early = model(input_ids=prompt).logits[0, :3]
        early_changed = model(input_ids=changed).logits[0, :3]
    if mask_type == "prefix_lm":
        assert (early - early_changed).abs().max().item() > 1e-3
    else:
        assert (early - early_changed).abs().max().item() == 0.0


# --- 3. generate() -------------------------------------------------------------------------------

GREEDY = dict(do_sample=False, max_new_tokens=5, eos_token_id=None, pad_token_id=0)


def left_padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Four prompts of lengths 3, 6, 4, 5, left-padded to 6."""
    generator = torch.Generator().manual_seed(4)
    lengths = [3, 6, 4, 5]
    input_ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    padding_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, -length:] = torch.randint(2, 64, (length,), generator=generator)
        padding_mask[row, -length:] = 1
    return input_ids, padding_mask


@pytest.mark.parametrize("mask_type", ["causal", "prefix_lm"])
def test_batched_greedy_generation_equals_one_at_a_time(mask_type):
    model = tiny_model("sdpa")
    attach_prefix(model, tiny_encoder(model), mask_type)
    input_ids, padding_mask = left_padded_prompts()
    with torch.no_grad():
        batched = model.generate(input_ids=input_ids, attention_mask=padding_mask, **GREEDY)[:, input_ids.shape[1] :]
        for row in range(input_ids.shape[0]):
            alone = input_ids[row : row + 1, padding_mask[row].bool()]
            single = model.generate(input_ids=alone, attention_mask=torch.ones_like(alone), **GREEDY)
            assert single[0, alone.shape[1] :].tolist() == batched[row].tolist(), f"row {row}"


# Cached generation equals a full recompute: tests/ptuning/test_architectures.py, for every architecture.


def test_beam_search_returns_num_return_sequences_rows():
    model = tiny_model("sdpa")
    attach_prefix(model, tiny_encoder(model), "prefix_lm")
    input_ids, padding_mask = left_padded_prompts()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids, attention_mask=padding_mask, num_beams=2, num_return_sequences=2, **GREEDY
        )
    assert out.shape == (2 * input_ids.shape[0], input_ids.shape[1] + GREEDY["max_new_tokens"])


# --- 4. Gradient checkpointing -------------------------------------------------------------------


def _prefix_gradients(checkpointing: bool, projection: bool) -> tuple[list[torch.Tensor], int]:
    model = tiny_model("sdpa")
    encoder = tiny_encoder(model, projection=projection)
    model.requires_grad_(False)
    attach_prefix(model, encoder, "prefix_lm")
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    calls = []
    model.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))
    input_ids, padding_mask = padded_batch("right")
    labels = prompt_answer_labels(input_ids, padding_mask, [3, 2])
    model(input_ids=input_ids, attention_mask=padding_mask, labels=labels, use_cache=False).loss.backward()
    return [param.grad for param in encoder.parameters()], len(calls)


@pytest.mark.parametrize("projection", [False, True], ids=["embedding", "projection"])
def test_gradient_checkpointing_gives_the_same_prefix_gradient(projection):
    plain, plain_calls = _prefix_gradients(checkpointing=False, projection=projection)
    checkpointed, checkpointed_calls = _prefix_gradients(checkpointing=True, projection=projection)
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the layer was recomputed in backward
    assert all(grad is not None and grad.abs().max() > 0 for grad in plain)
    for expected, found in zip(plain, checkpointed):
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-7)


# --- 5. The encoder ------------------------------------------------------------------------------


def test_encoder_parameter_counts():
    model = tiny_model()
    kv_size = 2 * 2 * 2 * 8  # layers * (k, v) * kv_heads * head_dim
    hidden = 24
    assert kv_layout(model.config).kv_size == kv_size
    assert tiny_encoder(model).num_parameters() == P * kv_size
    projected = tiny_encoder(model, projection=True)
    assert projected.num_parameters() == P * kv_size + kv_size * hidden + hidden + hidden * kv_size + kv_size
    names = {name for name, _ in projected.named_parameters()}
    assert names == {"embedding.weight", "trans.0.weight", "trans.0.bias", "trans.2.weight", "trans.2.bias"}
    default_hidden = PrefixEncoder(PrefixConfig(P, kv_layout(model.config), prefix_projection=True))
    assert default_hidden.trans[0].out_features == 32  # the base model's hidden size, as ChatGLM2


def test_encoder_output_layout():
    layout = kv_layout(tiny_config("glm"))
    encoder = PrefixEncoder(PrefixConfig(P, layout))
    with torch.no_grad():
        encoder.embedding.weight.copy_(torch.arange(P * layout.kv_size, dtype=torch.float32).view(P, layout.kv_size))
    out = torch.stack(encoder(), dim=1)  # keys and values alike: ChatGLM2's (L, 2, kv_heads, P, head_dim)
    assert out.shape == (layout.num_layers, 2, layout.num_kv_heads, P, layout.head_dim)
    weight = encoder.embedding.weight
    for layer in range(layout.num_layers):
        for kv in range(2):
            for head in range(layout.num_kv_heads):
                for p in range(P):
                    for d in range(layout.head_dim):
                        feature = ((layer * 2 + kv) * layout.num_kv_heads + head) * layout.head_dim + d
                        assert out[layer, kv, head, p, d] == weight[p, feature]


def test_encoder_is_fp32_when_built_under_another_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        encoder = PrefixEncoder(PrefixConfig(P, kv_layout(tiny_config("glm")), prefix_projection=True))
    finally:
        torch.set_default_dtype(previous)
    assert {param.dtype for param in encoder.parameters()} == {torch.float32}


def test_encoder_dropout_only_in_train_mode():
    torch.manual_seed(5)
    encoder = PrefixEncoder(PrefixConfig(P, kv_layout(tiny_config("glm")), dropout=0.5))
    torch.nn.init.normal_(encoder.embedding.weight, std=1.0)
    encoder.eval()
    clean = torch.stack(encoder(), dim=1)  # (L, 2, kv_heads, P, head_dim)
    assert torch.equal(clean, torch.stack(encoder(), dim=1))  # deterministic
    assert torch.equal(clean.permute(3, 0, 1, 2, 4).flatten(1), encoder.embedding.weight)  # nothing dropped
    encoder.train()
    dropped = torch.stack(encoder(), dim=1)
    zeroed = dropped == 0
    assert 0 < zeroed.float().mean() < 1
    assert torch.allclose(dropped[~zeroed], 2 * clean[~zeroed])


# --- 6. Removal ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_encoder", [True, False], ids=["prefix", "mask_only"])
def test_remove_restores_the_base_model(with_encoder):
    model = tiny_model("eager")
    input_ids, padding_mask = left_padded_prompts()  # left padding: positions differ while attached
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=padding_mask).logits
        hook = attach_prefix(model, tiny_encoder(model) if with_encoder else None, "prefix_lm")
        attached = model(input_ids=input_ids, attention_mask=padding_mask).logits
        hook.remove()
        after = model(input_ids=input_ids, attention_mask=padding_mask).logits
    assert max_diff_on_real_tokens(attached, before, padding_mask) > 1e-3
    assert torch.equal(after, before)
    assert model.config._attn_implementation == "eager"
    assert not hasattr(model, "prefix_encoder")


# --- 7. Independent of how transformers names what it passes -------------------------------------


def _decode_step_logits(model, prompt: torch.Tensor, keyword: str) -> torch.Tensor:
    """Prefill ``prompt[:, :-1]`` into a cache passed as ``keyword``, then feed the last token alone."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=prompt[:, :-1], use_cache=True, **{keyword: cache})
        return model(input_ids=prompt[:, -1:], attention_mask=torch.ones_like(prompt), **{keyword: cache}).logits


# transformers 5.24 renamed forward's past_key_values to cache (the old name still works until 5.40).
NEW_CACHE_KEYWORD = "cache" if "cache" in inspect.signature(GlmForCausalLM.forward).parameters else None


@pytest.mark.parametrize("keyword", [
    "past_key_values",
    pytest.param("cache", marks=pytest.mark.skipif(NEW_CACHE_KEYWORD is None, reason="transformers < 5.24: no cache=")),
], ids=["until-5.23", "from-5.24"])
def test_cache_is_found_under_the_old_and_the_new_keyword(keyword):
    model = tiny_model()
    attach_prefix(model, tiny_encoder(model), "causal")
    prompt = torch.randint(2, 64, (1, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        recomputed = model(input_ids=prompt).logits[:, -1]
    assert (_decode_step_logits(model, prompt, keyword)[:, -1] - recomputed).abs().max().item() <= TOL


def test_cache_is_found_by_type_whatever_its_name():
    cache = DynamicCache()
    assert find_cache({"use_cache": True, "some_future_name": cache, "input_ids": torch.ones(1, 2)}) is cache
    assert find_cache({"use_cache": True}) is None


def test_a_cache_the_hook_does_not_see_fails_loudly(monkeypatch):
    model = tiny_model()
    attach_prefix(model, tiny_encoder(model), "causal")
    prompt = torch.randint(2, 64, (1, 6), generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(injection, "find_cache", lambda kwargs: None)  # a name/type from a future release
    with pytest.raises(InjectionError, match=r"GlmAttention with transformers .*layer 0 attends over 6 keys"):
        _decode_step_logits(model, prompt, NEW_CACHE_KEYWORD or "past_key_values")


@pytest.mark.parametrize("with_encoder", [True, False], ids=["prefix", "mask_only"])
def test_a_layer_whose_attention_misses_the_injection_fails_loudly(with_encoder):
    model = tiny_model()
    attention = model.model.layers[1].self_attn
    forward = attention.forward

    def dropping(*args, **kwargs):  # what a release that stops forwarding attention kwargs would do
        kwargs.pop(INJECTION_KWARG, None)
        return forward(*args, **kwargs)

    attention.forward = dropping
    version = transformers.__version__
    with pytest.raises(InjectionError, match=rf"GlmForCausalLM with transformers {version}: .*layer\(s\) 1 of 2"):
        attach_prefix(model, tiny_encoder(model) if with_encoder else None, "causal")
    attention.forward = forward
    attach_prefix(model, tiny_encoder(model) if with_encoder else None, "causal")  # a sound model passes
