"""``--packing`` through ``sft.train``: packed training batches give the padded run's losses, gradient
norms and trained weights, for every method and mask, with gradient accumulation.

SGD, not AdamW: Adam's first step moves a weight by about the learning rate whatever its gradient's
size, so a gradient that is zero up to rounding could move a weight either way; SGD's step is the
gradient itself, so equal gradients give equal weights.
"""

from __future__ import annotations

import pytest
import torch

from ptuning.injection import attach_prefix
from sft.data.encoding import DataCollator, PackingCollator
from sft.methods import get_method
from sft.training import recipe
from sft.training.trainer import SFTTrainer, supervised_logits_only
from tests.ptuning.test_packing import rows
from tests.ptuning.test_prefix import tiny_encoder, tiny_model
from tests.sft.training.test_train import run_training, train_args, train_history

TOL = 1e-5


def trained(tiny_model_dir, out, method: str, mask: str, packing: str, dtype: str = "float32"):
    argv = train_args(tiny_model_dir, out, "--finetuning_type", method, "--mask", mask, "--packing", packing,
                      "--gradient_accumulation_steps", "2", "--max_steps", "2", "--save_steps", "100",
                      "--use_cpu", "--dtype", dtype, "--optim", "sgd",
                      *(["--lora_dropout", "0"] if method == "lora" else []))
    argv[argv.index("--validation_file"):argv.index("--validation_file") + 2] = []  # training only
    trainer, _ = run_training(argv)
    steps = [h for h in train_history(out) if "loss" in h]
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return trainer, steps, weights


@pytest.mark.parametrize("fill", [None, 16], ids=["exact", "filled"])
@pytest.mark.parametrize("mask", ["causal", "prefix_lm"])
@pytest.mark.parametrize("method", ["ptuning", "lora", "full"])
def test_packed_training_equals_padded_training(tiny_model_dir, tmp_path, method, mask, fill, monkeypatch):
    # filled: packed sequences end at a multiple of 16 tokens, as bf16 weights on CPU have them (here in fp32)
    monkeypatch.setattr(recipe, "shape_multiple", lambda training_args, model: fill)
    collators = []
    real_step = SFTTrainer.training_step

    def step_and_record(self, model, inputs, *args, **kwargs):
        collators.append("segment_ids" in inputs)
        return real_step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", step_and_record)
    packed_trainer, packed, packed_weights = trained(tiny_model_dir, tmp_path / "packed", method, mask, "true")
    assert isinstance(packed_trainer.train_data_collator, PackingCollator) and all(collators)
    assert packed_trainer.train_data_collator.pad_to_multiple_of == fill
    collators.clear()
    _, padded, padded_weights = trained(tiny_model_dir, tmp_path / "padded", method, mask, "false")
    assert collators and not any(collators)
    assert [h["step"] for h in packed] == [h["step"] for h in padded] == [1, 2]
    for a, b in zip(packed, padded):
        assert a["loss"] == pytest.approx(b["loss"], abs=TOL), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4, abs=TOL), a["step"]
        # The Trainer counted the same real tokens (padding excluded) in both.
        assert a["num_input_tokens_seen"] == b["num_input_tokens_seen"]
    assert packed_weights.keys() == padded_weights.keys() and packed_weights
    for name, weight in packed_weights.items():
        torch.testing.assert_close(weight, padded_weights[name], rtol=0, atol=TOL, msg=name)


@pytest.mark.parametrize("collator, multiple", [(PackingCollator(), None), (DataCollator(pad_token_id=0), None),
                                               (PackingCollator(pad_to_multiple_of=16), 16)],
                         ids=["packed", "padded", "filled"])
@pytest.mark.parametrize("with_prefix", [True, False], ids=["prefix", "mask_only"])
def test_supervised_logits_only_gives_the_same_loss_and_gradients(collator, multiple, with_prefix):
    model = tiny_model()
    attach_prefix(model, tiny_encoder(model) if with_prefix else None, "prefix_lm")
    model.requires_grad_(True)
    batch = collator(rows())
    results = []
    kept = supervised_logits_only(batch, multiple)
    supervised = int((batch["labels"][:, 1:] != -100).any(0).sum())
    assert len(kept["logits_to_keep"]) == (supervised if multiple is None else -(-supervised // multiple) * multiple)
    for inputs in (batch, kept):
        model.zero_grad()
        out = model(**inputs, num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out.loss.detach(), out.logits.shape[1], grads))
    (full_loss, full_width, full_grads), (loss, width, grads) = results
    torch.testing.assert_close(loss, full_loss, rtol=0, atol=1e-6)
    assert width == len(kept["logits_to_keep"]) < full_width  # prompt positions skipped
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["ptuning", "lora"])
def test_bf16_packed_training_follows_the_fp32_padded_run(tiny_model_dir, tmp_path, method):
    """bf16 weights on CPU (``--dtype auto`` on an AMX CPU; asked for here, so every CPU runs it): packed
    sequences filled to a multiple of 64 tokens, attention in fp32 for the backward; the losses and gradient
    norms follow the fp32 padded run's to bf16's precision."""
    trainer, bf16, weights = trained(tiny_model_dir, tmp_path / "bf16", method, "prefix_lm", "true", "bfloat16")
    assert trainer.model.dtype == torch.bfloat16 and trainer.train_data_collator.pad_to_multiple_of == 64
    assert all(w.dtype == torch.float32 for w in weights.values())  # the trained weights stay fp32
    _, fp32, _ = trained(tiny_model_dir, tmp_path / "fp32", method, "prefix_lm", "false")
    for a, b in zip(bf16, fp32, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-2), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=5e-2), a["step"]
        assert a["num_input_tokens_seen"] == b["num_input_tokens_seen"]  # the filler is not counted


@pytest.mark.parametrize("method, amx, flag, expected", [
    ("ptuning", True, "auto", torch.bfloat16), ("lora", True, "auto", torch.bfloat16),
    ("full", True, "auto", torch.float32), ("ptuning", False, "auto", torch.float32),
    ("ptuning", True, "float32", torch.float32), ("full", False, "bfloat16", torch.bfloat16),
])
def test_dtype_auto_is_bf16_for_a_frozen_base_on_a_cpu_that_computes_it(monkeypatch, method, amx, flag, expected):
    monkeypatch.setattr(recipe, "cpu_computes_bf16", lambda: amx)
    args = recipe.parse_args(["--finetuning_type", method, "--dtype", flag, "--use_cpu", "--output_dir", "unused"])
    assert recipe.weights_dtype(args.model, get_method(method), args.training) == expected


def test_label_smoothing_trains_with_the_prefix_lm_mask(tiny_model_dir, tmp_path):
    """The Trainer computes a smoothed loss outside the model: the mask still sees each prompt (packed and padded
    agree, where the packed batch stopped and the padded one attended both ways across its answers)."""
    losses = {}
    for mode in ("true", "false"):
        argv = train_args(tiny_model_dir, tmp_path / mode, "--mask", "prefix_lm", "--packing", mode, "--max_steps", "2",
                          "--save_steps", "100", "--use_cpu", "--dtype", "float32", "--label_smoothing_factor", "0.1",
                          "--eval_base_loss")
        run_training(argv)
        losses[mode] = [h for h in train_history(tmp_path / mode) if "loss" in h or "base_dev_loss" in h]
    assert losses["true"] and len(losses["true"]) == len(losses["false"])
    for a, b in zip(losses["true"], losses["false"]):
        for key in ("loss", "base_dev_loss"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=TOL), key
