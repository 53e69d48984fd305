"""tools.pretrain: row masking, split points, flag checks, one-line user errors, prefix-LM attention, and a
smoke run.

The tests use a tiny random GLM (2 layers, 32 wide) and a corpus file written here, so they need
no corpus package; the smoke run calls ``main`` in process with the embedded tokenizer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GlmConfig, GlmForCausalLM

from sft.data import IGNORE_INDEX
from sft.embedded import DEFAULT_MODEL_DIR
from tools.pretrain import (
    CARD_FILE,
    HELDOUT_FILE,
    HELDOUT_PPL_FILE,
    PretrainArguments,
    main,
    model_inputs,
    pack_records,
    sample_split_points,
    validate_args,
)

REPO = Path(__file__).resolve().parents[2]


def test_model_inputs_mask_labels_before_split():
    input_ids = torch.arange(10, 16)[None].repeat(2, 1)  # (2, 6)
    inputs = model_inputs(input_ids, torch.tensor([0, 3]))
    assert inputs["labels"].tolist() == [[10, 11, 12, 13, 14, 15], [IGNORE_INDEX] * 3 + [13, 14, 15]]
    assert inputs["position_ids"].tolist() == [list(range(6))] * 2
    assert inputs["attention_mask"].shape == (2, 1, 6, 6)


def test_split_points_follow_objective():
    rng = random.Random(0)
    causal = sample_split_points(50, PretrainArguments(objective="causal", seq_len=64), rng)
    prefix = sample_split_points(50, PretrainArguments(objective="prefix_lm", seq_len=64, max_prefix_fraction=0.5), rng)
    mixed = sample_split_points(200, PretrainArguments(objective="mix", seq_len=64), rng)
    assert causal.tolist() == [0] * 50
    assert prefix.max() <= 32 and (prefix > 0).sum() > 40
    assert 50 < (mixed == 0).sum() < 150


def test_records_rows_start_at_a_record_and_carry_its_header_length():
    records = [([1, 2, 3, 4, 5], 2), ([6, 7, 8], 1), ([9, 10, 11, 12, 13, 14], 3), ([15], 1)]
    rows, headers = pack_records(records, seq_len=6)
    assert rows == [[1, 2, 3, 4, 5, 6], [9, 10, 11, 12, 13, 14]]  # 7, 8 cut; [15] fills no row
    assert headers == [2, 3]


def test_prefix_lm_rows_with_a_header_split_after_it():
    rng = random.Random(0)
    args = PretrainArguments(objective="prefix_lm", seq_len=64)
    splits = sample_split_points(4, args, rng, headers=torch.tensor([7, 0, 12, 0]))
    assert splits[0] == 7 and splits[2] == 12
    causal = sample_split_points(2, PretrainArguments(objective="causal"), rng, headers=torch.tensor([7, 12]))
    assert causal.tolist() == [0, 0]


def test_validate_args_names_every_bad_flag_in_one_line():
    with pytest.raises(ValueError) as err:
        validate_args(PretrainArguments(objective="mlm", records_weight=2.0, num_key_value_heads=0))
    assert str(err.value) == (
        "--num_key_value_heads: expected a positive integer, found 0; "  # not a ZeroDivisionError
        "--objective: expected one of causal, prefix_lm, mix, found 'mlm'; "
        "--records_weight: expected a value in [0, 1], found 2.0"
    )


def test_corpus_shorter_than_a_row_is_one_error_line(tmp_path, capsys):
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("这款连衣裙\n\n很好看", encoding="utf-8")
    argv = ["--corpus_file", str(corpus_file), "--output_dir", str(tmp_path / "model"), "--seq_len", "64",
            "--num_threads", str(torch.get_num_threads())]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "error: corpus too small: no source has 64 tokens (--seq_len)"
    assert not (tmp_path / "model").exists()


def test_prefix_lm_prefix_is_bidirectional_and_blind_to_the_rest():
    torch.manual_seed(0)
    config = GlmConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    model = GlmForCausalLM(config).eval()
    input_ids = torch.randint(2, 64, (1, 10))  # (1, T)
    split = torch.tensor([5])

    def hidden(ids: torch.Tensor) -> torch.Tensor:
        inputs = model_inputs(ids, split)
        inputs.pop("labels")
        with torch.no_grad():
            return model.model(**inputs).last_hidden_state[0]  # (T, H)

    base = hidden(input_ids)
    later_in_prefix = input_ids.clone()
    later_in_prefix[0, 3] = 2 + (input_ids[0, 3] - 1) % 62
    assert not torch.allclose(hidden(later_in_prefix)[1], base[1])
    after_split = input_ids.clone()
    after_split[0, 7] = 2 + (input_ids[0, 7] - 1) % 62
    changed = hidden(after_split)
    assert torch.allclose(changed[:7], base[:7])


def test_pretrain_smoke_run(tmp_path):
    lines = (REPO / "data" / "adgen" / "train.json").read_text("utf-8").splitlines()[:60]
    summaries = [json.loads(line)["summary"] for line in lines]
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n\n".join(summaries), encoding="utf-8")
    out = tmp_path / "model"
    tiny = ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "4", "--num_key_value_heads", "2",
            "--head_dim", "8", "--intermediate_size", "64", "--max_position_embeddings", "128"]
    # In process; --num_threads is this process's own count, so main's set_num_threads changes nothing.
    argv = ["--corpus_file", str(corpus_file), "--output_dir", str(out), "--tokenizer_dir", str(DEFAULT_MODEL_DIR),
            "--max_steps", "3", "--batch_size", "2", "--seq_len", "32", "--warmup_steps", "1",
            "--heldout_fraction", "0.1", "--objective", "mix", "--num_threads", str(torch.get_num_threads()), *tiny]
    assert main(argv) == 0
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", HELDOUT_FILE, CARD_FILE):
        assert (out / name).is_file(), name
    metrics = json.loads((out / HELDOUT_PPL_FILE).read_text())
    assert f"heldout_perplexity: {metrics['heldout_txt_perplexity']}" in (out / CARD_FILE).read_text("utf-8")
    reloaded = AutoModelForCausalLM.from_pretrained(out, use_kernels=False)
    assert reloaded.config.num_hidden_layers == 2 and reloaded.config.vocab_size == 8000
