"""``--prefix_init rows``: the prefix starts as the keys/values the base computes for real tokens.

The independent check: a prefix made from the base's own keys/values of a context ``A`` must act
exactly as a KV cache of ``A``. Run causally with the next tokens ``B`` at positions ``|A|...``,
the prefixed model's logits for ``B`` equal the plain model's logits for ``B`` in ``A + B``, which
transformers computes without any of our code. That holds only if the capture takes every layer's
keys (after rotary) and values, and the encoder lays them out as the injection reads them.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from ptuning.encoder import PrefixConfig, PrefixEncoder
from ptuning.injection import attach_prefix, capture_key_values
from ptuning.layout import kv_layout
from sft.methods.ptuning import PTuning, PtuningArguments, initial_tokens
from tests.tiny_models import ARCHITECTURES, tiny_config

P = 6  # virtual tokens = context length
SEQUEL = 5


def base_model(arch: str) -> torch.nn.Module:
    config = tiny_config(arch)
    if arch == "glm_moe_dsa":
        config.index_topk = 64  # keep every key: the indexer cannot select among virtual tokens
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def context_and_sequel(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, 64, (1, P), generator=generator), torch.randint(2, 64, (1, SEQUEL), generator=generator)


def settings(model, mask: str = "causal") -> dict:
    return PTuning().settings(model, PtuningArguments(pre_seq_len=P), mask)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prefix_of_the_bases_own_keys_values_acts_as_their_cache(arch):
    model = base_model(arch)
    context, sequel = context_and_sequel()
    with torch.no_grad():
        expected = model(input_ids=torch.cat([context, sequel], dim=1)).logits[:, P:]
    rows = [{"input_ids": context[0].tolist(), "labels": context[0].tolist()}]
    PTuning().prepare_to_train(model, settings(model), "causal", PtuningArguments(pre_seq_len=P, prefix_init="rows"),
                               rows)
    with torch.no_grad():
        found = model(input_ids=sequel, position_ids=torch.arange(P, P + SEQUEL)[None]).logits
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=0)
    assert model.prefix_encoder.embedding.weight.requires_grad  # still what trains


def test_random_init_is_not_the_context():
    model = base_model("glm")
    context, sequel = context_and_sequel()
    with torch.no_grad():
        expected = model(input_ids=torch.cat([context, sequel], dim=1)).logits[:, P:]
    rows = [{"input_ids": context[0].tolist()}]
    PTuning().prepare_to_train(model, settings(model), "causal", PtuningArguments(pre_seq_len=P), rows)
    with torch.no_grad():
        found = model(input_ids=sequel, position_ids=torch.arange(P, P + SEQUEL)[None]).logits
    assert (found - expected).abs().max() > 1e-2


def test_capture_runs_without_the_prefix_and_leaves_the_model_as_it_was():
    model = base_model("glm4")
    context, _ = context_and_sequel()
    hook = attach_prefix(model, None, "causal")
    keys, values = capture_key_values(hook, context)
    layout = kv_layout(model.config)
    assert keys.shape == (layout.num_layers, layout.num_kv_heads, P, layout.head_dim)
    assert values.shape == (layout.num_layers, layout.num_kv_heads, P, layout.value_head_dim)
    assert hook.capture is None and not model.training
    with torch.no_grad():
        cache = model(input_ids=context, use_cache=True).past_key_values
    for layer in range(layout.num_layers):  # transformers' own cache holds the same keys and values
        torch.testing.assert_close(keys[layer], cache.layers[layer].keys[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(values[layer], cache.layers[layer].values[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="without a prefix encoder"):
        hook.remove()
        capture_key_values(attach_prefix(model, PrefixEncoder(PrefixConfig(P, layout)), "causal"), context)


def test_initial_tokens_follow_the_rows_and_repeat_them_when_short():
    rows = [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}]
    assert initial_tokens(rows, 4).tolist() == [[1, 2, 3, 4]]
    assert initial_tokens(rows, 7).tolist() == [[1, 2, 3, 4, 5, 1, 2]]
    with pytest.raises(ValueError, match="found none"):
        initial_tokens([{"input_ids": []}], 3)


def test_flags_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="--prefix_init: expected one of random, rows, found 'text'"):
        PtuningArguments(prefix_init="text")
    with pytest.raises(ValueError, match="expected no --prefix_projection"):
        PtuningArguments(prefix_init="rows", prefix_projection=True)
    encoder = PrefixEncoder(PrefixConfig(P, kv_layout(tiny_config("glm")), prefix_projection=True))
    with pytest.raises(ValueError, match="projection"):
        encoder.set_key_values(torch.zeros(1), torch.zeros(1))
