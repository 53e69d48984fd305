"""Per-row prefixes (:class:`ptuning.injection.RowPrefixes`, what the server passes): rows of one left-padded
batch with different soft prompts, of different lengths or none, and different masks, each checked against the
hand-written float64 GLM of ``test_prefix.py`` run on that row alone with its own prefix."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from ptuning.encoder import PrefixConfig, PrefixEncoder
from ptuning.injection import RowPrefixes, attach_prefix
from ptuning.layout import kv_layout
from tests.ptuning.test_prefix import BACKENDS, TOL, reference_logits, reference_prefix, tiny_encoder, tiny_model

LENGTHS = (7, 4, 6)  # real tokens per row; the batch is left-padded to 7


def short_encoder(model, virtual: int, seed: int) -> PrefixEncoder:
    torch.manual_seed(seed)
    encoder = PrefixEncoder(PrefixConfig(virtual, kv_layout(model.config)))
    torch.nn.init.normal_(encoder.embedding.weight, std=1.0)
    return encoder


def rows_setup(backend: str):
    """A model with a mask-only hook, three rows (prefix of 3, none, prefix of 2) and their RowPrefixes."""
    model = tiny_model(backend)
    attach_prefix(model, None, "causal")  # the hook's own mask must not matter: each row brings its own
    encoders = [tiny_encoder(model, seed=1), None, short_encoder(model, 2, seed=5)]
    prefix_lm = torch.tensor([True, False, True])
    torch.manual_seed(3)
    ids = torch.randint(2, 64, (3, max(LENGTHS)))
    padding = torch.tensor([[0] * (max(LENGTHS) - n) + [1] * n for n in LENGTHS])
    with torch.no_grad():
        outputs = [e() if e is not None else None for e in encoders]
    width = max(o[0].shape[2] for o in outputs if o is not None)
    keys = torch.zeros(2, 3, 2, width, 8)  # (L, B, kv_heads, P, head_dim)
    values = torch.zeros_like(keys)
    for row, output in enumerate(outputs):
        if output is not None:
            keys[:, row, :, : output[0].shape[2]] = output[0]
            values[:, row, :, : output[1].shape[2]] = output[1]
    lengths = torch.tensor([0 if o is None else o[0].shape[2] for o in outputs])
    return model, encoders, RowPrefixes(keys, values, lengths, prefix_lm), ids, padding


def row_reference(model, encoder, ids_row: torch.Tensor, prompt_length: int | None) -> torch.Tensor:
    """One unpadded row ``(1, T)`` alone, in float64, with its own prefix (or none)."""
    prefix = reference_prefix(encoder) if encoder is not None else None
    bound = None if prompt_length is None else torch.tensor([prompt_length])
    return reference_logits(model, ids_row, torch.ones_like(ids_row), prefix=prefix, prompt_length=bound)[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_row_of_a_mixed_prefill_matches_the_row_alone(backend):
    model, encoders, rows, ids, padding = rows_setup(backend)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=padding, row_prefixes=rows).logits  # (B, T, V)
    for row, length in enumerate(LENGTHS):
        real = ids[row : row + 1, -length:]
        prompt = length if rows.prefix_lm[row] else None
        expected = row_reference(model, encoders[row], real, prompt)
        assert (logits[row, -length:].double() - expected).abs().max() < TOL
        if encoders[row] is not None:  # guard: the row's own prefix matters
            assert (logits[row, -length:].double() - row_reference(model, None, real, prompt)).abs().max() > 1e-2
    # guard: a row made causal differs from its prefix-LM self, so the per-row mask is what was checked
    causal = row_reference(model, encoders[0], ids[:1], None)
    assert (logits[0].double() - causal).abs().max() > 1e-2


def test_decode_step_over_a_merged_cache_matches_each_row_alone():
    """Prefill with a cache, then one new token per row: the step sees the prompt, its own prefix, no padding."""
    model, encoders, rows, ids, padding = rows_setup("sdpa")
    cache = DynamicCache(config=model.config)
    step = torch.tensor([[9], [17], [33]])
    with torch.no_grad():
        model(input_ids=ids, attention_mask=padding, cache=cache, use_cache=True, row_prefixes=rows)
        padding = torch.cat([padding, torch.ones(3, 1, dtype=padding.dtype)], dim=1)
        logits = model(input_ids=step, attention_mask=padding, cache=cache, use_cache=True, row_prefixes=rows).logits
    for row, length in enumerate(LENGTHS):
        sequence = torch.cat([ids[row : row + 1, -length:], step[row : row + 1]], dim=1)
        prompt = length if rows.prefix_lm[row] else None  # the prompt both ways, the new token causal
        expected = row_reference(model, encoders[row], sequence, prompt)[-1]
        assert (logits[row, -1].double() - expected).abs().max() < TOL


def test_row_prefixes_are_refused_on_a_model_with_its_own_encoder():
    model = tiny_model()
    attach_prefix(model, tiny_encoder(model), "causal")
    _, _, rows, ids, padding = rows_setup("sdpa")
    with pytest.raises(ValueError, match="without a prefix encoder of its own"):
        model(input_ids=ids, attention_mask=padding, row_prefixes=rows)
