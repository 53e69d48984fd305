"""Packed batches and the attention fast paths, against the padded batch and the dense-mask reference.

A packed batch (``sft.data.encoding.PackingCollator``) concatenates a batch's rows into one
sequence ``(1, N)``; the hook confines attention to each row. Its loss, logits and gradients must
equal those of the right-padded batch of the same rows (an independent computation: batched
attention with a padding mask), and no row may influence another. The fast paths (no mask,
boolean masks built once, row-by-row attention) must equal the dense float masks the hook used
before them (``hook.dense``).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from ptuning.injection import attach_prefix
from sft.data.encoding import IGNORE_INDEX, DataCollator, PackingCollator, unpack
from tests.ptuning.test_prefix import tiny_encoder, tiny_model

TOL = 1e-5
MASKS = ("causal", "prefix_lm")
BACKENDS = ("sdpa", "eager")
WITH = ("prefix", "mask_only")  # P-tuning; LoRA and full fine-tuning run the mask-only hook
CASES = list(itertools.product(MASKS, WITH, BACKENDS))  # every mask, with and without a prefix, on each backend


def rows(seed: int = 3) -> list[dict]:
    """Four rows of 9, 4, 12 and 6 tokens; prompts of 5, 2, 7 and 3 tokens (labels -100)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for length, prompt in ((9, 5), (4, 2), (12, 7), (6, 3)):
        ids = torch.randint(2, 64, (length,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def attached(backend: str, mask: str, with_prefix: bool):
    model = tiny_model(backend)
    encoder = tiny_encoder(model) if with_prefix else None
    if encoder is None:
        model.requires_grad_(True)  # full fine-tuning: every weight's gradient is compared
    return model, attach_prefix(model, encoder, mask)


def forward(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, logits, gradients of every trainable parameter)``."""
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads


def row_logits(logits: torch.Tensor, batch: dict) -> list[torch.Tensor]:
    """Each row's ``(t, V)`` logits, from a padded ``(B, T, V)`` or a packed ``(1, N, V)`` batch."""
    if "segment_ids" in batch:
        real = int(batch["attention_mask"].sum())  # without a filler row
        lengths = torch.unique_consecutive(batch["segment_ids"][0, :real], return_counts=True)[1].tolist()
        return list(logits[0, :real].split(lengths))
    return [logits[b, : int(n)] for b, n in enumerate(batch["attention_mask"].sum(1))]


def assert_grads_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=TOL, msg=name)


def test_collator_concatenates_rows_with_positions_from_zero():
    batch = PackingCollator()([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                               {"input_ids": [8, 9], "labels": [8, 9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1]]
    # A row's first label would be predicted from the previous row's last token: never supervised.
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    padded = unpack(batch, pad_token_id=0)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert padded["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]


def test_collator_fills_to_a_multiple_with_a_row_of_its_own():
    plain, filled = PackingCollator()(rows()), PackingCollator(pad_to_multiple_of=16, pad_token_id=1)(rows())
    assert plain["input_ids"].shape == (1, 31) and filled["input_ids"].shape == (1, 32)
    assert filled["input_ids"][0, -1] == 1 and filled["labels"][0, -1] == IGNORE_INDEX
    assert filled["attention_mask"][0].tolist() == [1] * 31 + [0]  # the Trainer counts 31 real tokens
    assert filled["segment_ids"][0, -1] == 4 and filled["position_ids"][0, -1] == 0  # a fifth row, from 0
    for key, value in plain.items():
        assert torch.equal(filled[key][:, :31], value), key
    assert PackingCollator(pad_to_multiple_of=31)(rows())["input_ids"].shape == (1, 31)  # no empty filler row
    for key, value in unpack(plain, pad_token_id=0).items():
        assert torch.equal(unpack(filled, pad_token_id=0)[key], value), key


def test_packed_batch_with_padding_inside_is_refused():
    model, _ = attached("sdpa", "causal", True)
    batch = PackingCollator(pad_to_multiple_of=16)(rows())
    batch["attention_mask"][0, 3] = 0  # a token of the first row
    with pytest.raises(ValueError, match="padding only as a row of its own at the end"):
        model(**batch)
    batch = PackingCollator(pad_to_multiple_of=16)(rows())
    batch["segment_ids"][0, -1] = 3  # the filler joined to the last row
    with pytest.raises(ValueError, match="padding only as a row of its own at the end"):
        model(**batch)


@pytest.mark.parametrize("fill", [None, 16], ids=["exact", "filled"])
@pytest.mark.parametrize("mask, with_, backend", CASES)
def test_packed_batch_equals_padded_batch(mask, with_, backend, fill):
    model, _ = attached(backend, mask, with_ == "prefix")
    model.train()  # no dropout configured: train mode changes nothing but what the Trainer would set
    padded, packed = DataCollator(pad_token_id=0)(rows()), PackingCollator(pad_to_multiple_of=fill)(rows())
    loss_padded, logits_padded, grads_padded = forward(model, padded)
    loss_packed, logits_packed, grads_packed = forward(model, packed)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=0, atol=TOL)
    for a, b in zip(row_logits(logits_packed, packed), row_logits(logits_padded, padded), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    assert_grads_close(grads_packed, grads_padded)
    # Guard: the same tokens as one row (no segments) let rows see each other, and the loss differs.
    joined = {k: v for k, v in PackingCollator()(rows()).items() if k not in ("segment_ids", "position_ids")}
    assert (model(**joined).loss - loss_padded).abs() > 1e-3


@pytest.mark.parametrize("mask, with_, backend", CASES)
def test_no_row_of_a_packed_batch_influences_another(mask, with_, backend):
    model, _ = attached(backend, mask, with_ == "prefix")
    batch = PackingCollator()(rows())
    changed = rows()
    changed[2]["input_ids"] = [(token + 7) % 62 + 2 for token in changed[2]["input_ids"]]  # same length, new tokens
    other = PackingCollator()(changed)
    with torch.no_grad():
        before, after = row_logits(model(**batch).logits, batch), row_logits(model(**other).logits, other)
    for index, (a, b) in enumerate(zip(before, after)):
        if index == 2:
            assert not torch.equal(a, b)  # the perturbation reaches its own row
        else:
            assert torch.equal(a, b), index  # bit-identical: row-by-row attention, per-token everything else


@pytest.mark.parametrize("mask, with_, backend", CASES)
def test_row_by_row_attention_equals_the_dense_block_mask(mask, with_, backend):
    model, hook = attached(backend, mask, with_ == "prefix")
    batch = PackingCollator()(rows())
    fast = forward(model, batch)
    hook.dense = True
    dense = forward(model, batch)
    torch.testing.assert_close(fast[0], dense[0], rtol=0, atol=TOL)
    torch.testing.assert_close(fast[1], dense[1], rtol=0, atol=TOL)
    assert_grads_close(fast[2], dense[2])


@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("mask, with_, backend", CASES)
def test_padded_fast_paths_equal_the_dense_float_mask(mask, with_, backend, padding):
    """No mask (causal, unpadded, no prefix), shared or per-row boolean masks: as the dense float mask."""
    model, hook = attached(backend, mask, with_ == "prefix")
    data = rows() if padding != "none" else [row for row in rows() if len(row["input_ids"]) == 9] * 2
    batch = DataCollator(pad_token_id=0, padding_side="left" if padding == "left" else "right")(data)
    fast = forward(model, batch)
    hook.dense = True
    dense = forward(model, batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(fast[0], dense[0], rtol=0, atol=TOL)
    torch.testing.assert_close(fast[1][real], dense[1][real], rtol=0, atol=TOL)
    assert_grads_close(fast[2], dense[2])


def test_packed_prefix_lm_needs_labels_and_a_batch_of_one_row():
    model, _ = attached("sdpa", "prefix_lm", True)
    batch = PackingCollator()(rows())
    del batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        model(**batch)
    doubled = {k: torch.cat([v, v]) for k, v in PackingCollator()(rows()).items()}
    with pytest.raises(ValueError, match=r"segment_ids of shape \(1, N\)"):
        model(**doubled)


def test_generation_is_unchanged_by_the_fast_paths():
    model, hook = attached("sdpa", "causal", True)
    batch = DataCollator(pad_token_id=0, padding_side="left")([{"input_ids": r["input_ids"]} for r in rows()])
    fast = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=0)
    hook.dense = True
    dense = model.generate(**copy.deepcopy(batch), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(fast, dense)


@pytest.mark.parametrize("case", ["prefix_mask", "causal_no_mask", "one_query"])
def test_grouped_sdpa_equals_transformers_repeated_key_values(case, monkeypatch):
    """On CPU the wrapper attends with 2 key/value heads shared by 6 query heads (``enable_gqa``), where
    transformers' SDPA function repeats each key/value head 3 times: outputs and gradients agree."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from ptuning import injection

    grouped_sdpa, calls = injection._grouped_sdpa, []
    monkeypatch.setattr(injection, "_grouped_sdpa", lambda *args: calls.append(args) or grouped_sdpa(*args))
    generator = torch.Generator().manual_seed(0)
    queries, keys = {"prefix_mask": (7, 11), "causal_no_mask": (7, 7), "one_query": (1, 11)}[case]
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    query = torch.randn(2, 6, queries, 8, generator=generator, requires_grad=True)
    key, value = (torch.randn(2, 2, keys, 8, generator=generator, requires_grad=True) for _ in range(2))
    mask = None
    if case != "causal_no_mask":  # a prefix of 4 keys visible to all, then causal; row 1 misses its first key
        mask = torch.ones(2, 1, queries, keys, dtype=torch.bool).tril(keys - queries)
        mask[1, ..., 4] = False
    kwargs = {"dropout": 0.0, "scaling": 0.3, "position_ids": None}
    sdpa = injection._backend_attention(module, "sdpa")
    grouped, weights = injection._attention(module, sdpa, query, key, value, mask, kwargs)
    assert len(calls) == (case != "one_query")  # on CPU, transformers' function only for a decoding step
    reference, _ = sdpa_attention_forward(module, query, key, value, mask, **kwargs)
    assert weights is None and grouped.shape == reference.shape == (2, queries, 6, 8)
    torch.testing.assert_close(grouped, reference, rtol=0, atol=1e-6)
    upstream = torch.randn(reference.shape, generator=generator)
    ours = torch.autograd.grad(grouped, (query, key, value), upstream)
    theirs = torch.autograd.grad(reference, (query, key, value), upstream)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16_weights", "autocast"])
def test_bf16_training_attends_in_fp32(autocast):
    """Training with bf16 inputs (a bf16 base, or ``--bf16``'s autocast) runs SDPA in fp32, where PyTorch's CPU
    backward is faster: the output is the fp32 attention of the same bf16 inputs, rounded once to bf16."""
    from types import SimpleNamespace

    from ptuning import injection

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 6, 7, 8, generator=generator).bfloat16().requires_grad_()
    key, value = (torch.randn(1, 2, 11, 8, generator=generator).bfloat16().requires_grad_() for _ in range(2))
    mask = torch.ones(1, 1, 7, 11, dtype=torch.bool).tril(4)
    module = SimpleNamespace(is_causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        output = injection._grouped_sdpa(module, query, key, value, mask, 0.0, 0.3, None)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query.float(), key.float(), value.float(), attn_mask=mask, scale=0.3, enable_gqa=True)
    assert output.dtype == torch.bfloat16
    assert torch.equal(output, expected.transpose(1, 2).bfloat16())
    with torch.no_grad():  # inference keeps bf16 (its forward is the faster one)
        plain = injection._grouped_sdpa(module, query, key, value, mask, 0.0, 0.3, None)
    assert not torch.equal(plain, output)


@pytest.mark.parametrize("collator", [PackingCollator(), DataCollator(pad_token_id=0)], ids=["packed", "padded"])
def test_prompt_labels_mark_the_prompts_when_the_labels_are_taken_out(collator):
    """transformers' Trainer takes ``labels`` out when it computes the loss itself (label smoothing); the
    mask still finds each prompt from ``prompt_labels``: the same logits as with the labels in."""
    from ptuning.injection import PROMPT_LABELS_KWARG

    model, _ = attached("sdpa", "prefix_lm", True)
    batch = collator(rows())
    without = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        expected = model(**batch).logits
        found = model(**without, **{PROMPT_LABELS_KWARG: batch["labels"]}).logits
    assert torch.equal(found, expected)
    if "segment_ids" not in batch:  # guard: without them a padded prefix-LM batch attends both ways everywhere
        with torch.no_grad():
            assert not torch.allclose(model(**without).logits, expected, atol=1e-3)
