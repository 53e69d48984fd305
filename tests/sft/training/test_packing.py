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
from sft.training.trainer import SFTTrainer, supervised_logits_only
from tests.ptuning.test_packing import rows
from tests.ptuning.test_prefix import tiny_encoder, tiny_model
from tests.sft.training.test_train import run_training, train_args, train_history

TOL = 1e-5


def trained(tiny_model_dir, out, method: str, mask: str, packing: str):
    argv = train_args(tiny_model_dir, out, "--finetuning_type", method, "--mask", mask, "--packing", packing,
                      "--gradient_accumulation_steps", "2", "--max_steps", "2", "--save_steps", "100",
                      "--use_cpu", "--dtype", "float32", "--optim", "sgd",
                      *(["--lora_dropout", "0"] if method == "lora" else []))
    argv[argv.index("--validation_file"):argv.index("--validation_file") + 2] = []  # training only
    trainer, _ = run_training(argv)
    steps = [h for h in train_history(out) if "loss" in h]
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return trainer, steps, weights


@pytest.mark.parametrize("mask", ["causal", "prefix_lm"])
@pytest.mark.parametrize("method", ["ptuning", "lora", "full"])
def test_packed_training_equals_padded_training(tiny_model_dir, tmp_path, method, mask, monkeypatch):
    collators = []
    real_step = SFTTrainer.training_step

    def step_and_record(self, model, inputs, *args, **kwargs):
        collators.append("segment_ids" in inputs)
        return real_step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", step_and_record)
    packed_trainer, packed, packed_weights = trained(tiny_model_dir, tmp_path / "packed", method, mask, "true")
    assert isinstance(packed_trainer.train_data_collator, PackingCollator) and all(collators)
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


@pytest.mark.parametrize("collator", [PackingCollator(), DataCollator(pad_token_id=0)], ids=["packed", "padded"])
@pytest.mark.parametrize("with_prefix", [True, False], ids=["prefix", "mask_only"])
def test_supervised_logits_only_gives_the_same_loss_and_gradients(collator, with_prefix):
    model = tiny_model()
    attach_prefix(model, tiny_encoder(model) if with_prefix else None, "prefix_lm")
    model.requires_grad_(True)
    batch = collator(rows())
    results = []
    for inputs in (batch, supervised_logits_only(batch)):
        model.zero_grad()
        out = model(**inputs, num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out.loss.detach(), out.logits.shape[1], grads))
    (full_loss, full_width, full_grads), (loss, width, grads) = results
    torch.testing.assert_close(loss, full_loss, rtol=0, atol=1e-6)
    assert width == (batch["labels"][:, 1:] != -100).any(0).sum() < full_width  # prompt positions skipped
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=0, atol=1e-6, msg=name)
