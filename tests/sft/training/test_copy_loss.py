"""``--copy_loss_weight``: which answer tokens count as copies of the prompt, how batches carry the marks, and
the weighted loss against a hand-written one, packed and padded, and through ``sft.train``."""

from __future__ import annotations

import pytest
import torch

from ptuning.injection import PROMPT_LABELS_KWARG, attach_prefix
from sft.data.encoding import IGNORE_INDEX, DataCollator, PackingCollator, _assemble, _Tokens, copy_marks
from sft.training.trainer import SFTTrainer, SFTTrainingArguments
from tests.ptuning.test_prefix import tiny_encoder, tiny_model
from tests.sft.training.test_train import run_training, train_args, train_history

EOS = 2


def prompt(ids: list[int], special: list[bool]) -> _Tokens:
    return _Tokens(ids, [IGNORE_INDEX] * len(ids), [False] * len(ids), special)


def test_copies_mark_the_answer_tokens_of_the_prompt_text():
    tokens = prompt([5, 20, 21, 22, 6], [True, False, False, False, True])
    # 21 twice, 5 and 6 are the prompt's special tokens, 30 is not in the prompt
    assert copy_marks(tokens, [21, 30, 21, 5, 22, 6, EOS]) == [1, 0, 1, 0, 1, 0, 0]
    assert copy_marks(tokens, [30, 31, EOS]) == [0, 0, 0]
    assert copy_marks(tokens, [EOS]) == [0]


def test_a_row_marks_only_the_prompt_tokens_the_model_sees():
    tokens = prompt([5, 20, 21, 22, 6], [True, False, False, False, True])
    tokens.keep[0] = tokens.keep[-1] = True
    row = _assemble(tokens, [20, 21, 22], EOS, max_source_length=4, max_target_length=8, copies=True)
    # the cut drops 20, the leftmost token truncation may drop: the answer's 20 is no copy of what the model reads
    assert row["input_ids"] == [5, 21, 22, 6, 20, 21, 22, EOS]
    assert row["copies"] == [0, 0, 0, 0, 0, 1, 1, 0]
    assert "copies" not in _assemble(tokens, [20], EOS, 8, 8)


def marked_rows() -> list[dict]:
    """Rows of 8, 6 and 10 tokens whose answers repeat some of their prompt's tokens."""
    generator = torch.Generator().manual_seed(5)
    out = []
    for length, size in ((7, 3), (5, 2), (9, 4)):
        ids = torch.randint(4, 40, (size,), generator=generator).tolist()
        answer = [ids[1], *torch.randint(4, 40, (length - size - 2,), generator=generator).tolist(), ids[0]]
        tokens = prompt(ids, [False] * size)
        out.append(_assemble(tokens, answer, EOS, 16, 16, copies=True))
    assert all(sum(row["copies"]) >= 2 for row in out)
    return out


def test_collators_carry_the_marks():
    rows = marked_rows()
    padded = DataCollator(pad_token_id=0)(rows)
    assert padded["copies"].shape == padded["labels"].shape
    width = padded["copies"].shape[1]
    for index, row in enumerate(rows):
        assert padded["copies"][index].tolist() == row["copies"] + [0] * (width - len(row["copies"]))
    packed = PackingCollator(pad_to_multiple_of=16)(rows)
    assert packed["copies"].shape == packed["input_ids"].shape == (1, 32)
    marks = [mark for row in rows for mark in row["copies"]]
    assert packed["copies"][0].tolist() == marks + [0] * (32 - len(marks))


def hand_weighted_loss(model, rows: list[dict], weight: float) -> torch.Tensor:
    """Each row alone, unpadded: the sum over its answer of weight * cross-entropy (log-softmax picked by hand),
    over the batch's label tokens."""
    total, count = 0.0, 0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor([row["labels"]])
        logits = model(input_ids=ids, **{PROMPT_LABELS_KWARG: labels}).logits[0, :-1].float()
        following = labels[0, 1:]
        marks = torch.tensor(row["copies"][1:])
        scored = following != IGNORE_INDEX
        picked = -logits.log_softmax(-1)[scored].gather(1, following[scored][:, None])[:, 0]
        total = total + (picked * torch.where(marks[scored].bool(), weight, 1.0)).sum()
        count += int(scored.sum())
    return total / count


@pytest.mark.parametrize("collator", [PackingCollator(), DataCollator(pad_token_id=0)], ids=["packed", "padded"])
@pytest.mark.parametrize("mask", ["prefix_lm", "causal"])
def test_the_weighted_loss_and_its_gradient_are_the_hand_written_ones(tmp_path, collator, mask):
    model = tiny_model()
    attach_prefix(model, tiny_encoder(model), mask)
    args = SFTTrainingArguments(output_dir=str(tmp_path), copy_loss_weight=4.0, use_cpu=True, report_to=[])
    trainer = SFTTrainer(model=model, args=args, checkpoint_info=None)
    rows = marked_rows()
    batch = collator(rows)
    scored = (batch["labels"][:, 1:] != -100).sum()
    results = []
    for compute in (lambda: trainer.compute_loss(model, batch, num_items_in_batch=scored),
                    lambda: hand_weighted_loss(model, rows, 4.0)):
        model.zero_grad()
        loss = compute()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss, grads), (expected, expected_grads) = results
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    plain = hand_weighted_loss(model, rows, 1.0).detach()
    assert plain < loss
    # evaluation (the Trainer asks for the outputs too) scores the plain loss, marks or not
    evaluated, _ = trainer.compute_loss(model, batch, return_outputs=True, num_items_in_batch=scored)
    torch.testing.assert_close(evaluated.detach(), plain, rtol=0, atol=1e-5)
    trainer.args.copy_loss_weight = 1.0  # weights 1 everywhere
    torch.testing.assert_close(trainer.compute_loss(model, batch, num_items_in_batch=scored).detach(), plain,
                               rtol=0, atol=1e-5)


def test_training_weighs_copies_packed_and_padded_alike(tiny_model_dir, tmp_path):
    losses = {}
    for name, weight, packing in (("packed", "4", "true"), ("padded", "4", "false"), ("plain", "1", "true")):
        argv = train_args(tiny_model_dir, tmp_path / name, "--copy_loss_weight", weight, "--packing", packing,
                          "--max_steps", "2", "--save_steps", "100", "--use_cpu", "--dtype", "float32")
        run_training(argv)
        losses[name] = train_history(tmp_path / name)
    steps = {name: [h for h in history if "loss" in h] for name, history in losses.items()}
    assert [h["step"] for h in steps["packed"]] == [h["step"] for h in steps["padded"]] == [1, 2]
    for a, b in zip(steps["packed"], steps["padded"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
    # from the same start, the first step's loss weighs ADGEN's named values 4 times: above the plain loss
    assert steps["packed"][0]["loss"] > steps["plain"][0]["loss"] * 1.05


@pytest.mark.parametrize("flags, found", [(["--copy_loss_weight", "0"], "found 0.0"),
                                          (["--copy_loss_weight", "2", "--label_smoothing_factor", "0.1"],
                                           "expected at most one of them")])
def test_bad_copy_loss_weights_are_refused(tmp_path, flags, found):
    with pytest.raises(ValueError, match=found):
        SFTTrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                             **{f[2:]: float(v) for f, v in zip(flags[::2], flags[1::2])})
