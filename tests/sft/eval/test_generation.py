"""sft.generation: batched left-padded generation equals one row at a time, for every method and mask.

The reference is the same model run on each prompt alone (no padding at all), so a padding,
position or mask mistake in the batched path shows up as different tokens.
"""

from __future__ import annotations

import pytest
import torch

from sft.checkpoint import load_for_inference
from sft.data import DataArguments, encode_prompt, load_examples
from sft.eval.arguments import GenerationArguments
from sft.eval.generation import (
    eos_token_ids,
    Answer,
    generate_all,
    generate_answers,
    generate_token_ids,
    length_sorted_batches,
)

NEW_TOKENS = 10


@pytest.fixture
def prompt_ids(adgen_file, tiny_model_dir) -> list[list[int]]:
    """The six ADGEN prompts rendered with chatglm3 and encoded as for training (5 to 50 tokens)."""
    _, tokenizer, _ = load_for_inference(str(tiny_model_dir))
    examples = load_examples(adgen_file, DataArguments(template="chatglm3"))
    return [encode_prompt(example, tokenizer, 64) for example in examples]


def load(kind: str, mask: str, tiny_model_dir, tiny_ptuning_checkpoint):
    if kind == "base":
        return load_for_inference(str(tiny_model_dir), expect={"mask": mask})
    return load_for_inference(str(tiny_ptuning_checkpoint(mask)))


@pytest.mark.parametrize("mask", ["causal", "prefix_lm"])
@pytest.mark.parametrize("kind", ["base", "ptuning"])
def test_batch_of_mixed_lengths_equals_one_at_a_time(kind, mask, prompt_ids, tiny_model_dir, tiny_ptuning_checkpoint):
    model, tokenizer, info = load(kind, mask, tiny_model_dir, tiny_ptuning_checkpoint)
    assert (info.method, info.mask) == ({"base": "base"}.get(kind, "ptuning"), mask)
    args = GenerationArguments(max_new_tokens=NEW_TOKENS, batch_size=4)
    rows = list({len(ids): ids for ids in prompt_ids}.values())[:4]
    assert len(rows) == 4, "the test needs four prompts of different lengths"
    batched = generate_token_ids(model, tokenizer, rows, args)
    alone = [generate_token_ids(model, tokenizer, [ids], args)[0] for ids in rows]
    assert batched == alone
    assert all(len(ids) == NEW_TOKENS for ids in batched), "random tiny models should not hit eos this soon"


@pytest.mark.parametrize("mask", ["causal", "prefix_lm"])
def test_prefix_changes_what_is_generated(mask, prompt_ids, tiny_model_dir, tiny_ptuning_checkpoint):
    """The hooks are active inside generate(): the checkpoint's prefix changes the tokens."""
    args = GenerationArguments(max_new_tokens=NEW_TOKENS)
    base = generate_token_ids(*load("base", mask, tiny_model_dir, tiny_ptuning_checkpoint)[:2], prompt_ids, args)
    tuned = generate_token_ids(*load("ptuning", mask, tiny_model_dir, tiny_ptuning_checkpoint)[:2], prompt_ids, args)
    assert base != tuned


def test_generate_all_returns_input_order_and_skips(prompt_ids, tiny_model_dir):
    model, tokenizer, _ = load_for_inference(str(tiny_model_dir))
    args = GenerationArguments(max_new_tokens=6, batch_size=4)
    alone = [generate_answers(model, tokenizer, [ids], args)[0].text for ids in prompt_ids]
    seen: list[tuple[int, str]] = []
    answers = generate_all(model, tokenizer, prompt_ids, args, on_result=lambda i, a: seen.append((i, a.text)),
                           skip={0, 3})
    assert [a and a.text for a in answers] == [None if i in (0, 3) else text for i, text in enumerate(alone)]
    assert sorted(seen) == [(i, alone[i]) for i in (1, 2, 4, 5)]
    assert [i for i, _ in seen] != [1, 2, 4, 5], "rows should come back in length order, not input order"


def test_length_sorted_batches():
    prompts = [[1] * n for n in (3, 7, 5, 7, 1)]
    assert length_sorted_batches(prompts, 2) == [[1, 3], [2, 0], [4]]
    assert length_sorted_batches(prompts, 2, skip={3}) == [[1, 2], [0, 4]]


def test_eos_token_ids_union(tiny_model_dir):
    model, tokenizer, _ = load_for_inference(str(tiny_model_dir))
    user, observation = tokenizer.convert_tokens_to_ids(["<|user|>", "<|observation|>"])
    assert eos_token_ids(model, tokenizer) == [tokenizer.eos_token_id, user, observation]
    model.generation_config.eos_token_id = 7
    assert eos_token_ids(model, tokenizer) == [7, tokenizer.eos_token_id]
    model.generation_config.eos_token_id = None
    assert eos_token_ids(model, tokenizer) == [tokenizer.eos_token_id]


def test_stops_on_each_declared_eos(prompt_ids, tiny_model_dir):
    """Declare a token the model is about to produce as the third eos id: generation stops before it."""
    model, tokenizer, _ = load_for_inference(str(tiny_model_dir))
    args = GenerationArguments(max_new_tokens=NEW_TOKENS)
    free = generate_token_ids(model, tokenizer, prompt_ids[:2], args)
    stop = next(k for k in range(2, NEW_TOKENS) if free[0][k] not in free[0][:k] + free[1][:k])
    user = tokenizer.convert_tokens_to_ids("<|user|>")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, user, free[0][stop]]
    stopped = generate_token_ids(model, tokenizer, prompt_ids[:2], args)
    assert stopped[0] == free[0][:stop]
    assert free[0][stop] not in stopped[1] and stopped[1] == free[1][: len(stopped[1])]
    text = generate_answers(model, tokenizer, prompt_ids[:1], args)[0].text
    assert text == tokenizer.decode(free[0][:stop], skip_special_tokens=True).strip()


def test_an_answer_says_whether_max_new_tokens_ended_it(prompt_ids, tiny_model_dir):
    """Declare a token of row 0's text an eos: row 0 ends there, row 1 (without that token) at the limit."""
    model, tokenizer, _ = load_for_inference(str(tiny_model_dir))
    args = GenerationArguments(max_new_tokens=NEW_TOKENS)
    free = generate_token_ids(model, tokenizer, prompt_ids[:2], args)
    assert [len(ids) for ids in free] == [NEW_TOKENS, NEW_TOKENS], "the random model writes no eos this soon"
    stop = next(k for k in range(1, NEW_TOKENS) if free[0][k] not in free[0][:k] + free[1])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, free[0][stop]]
    answers = generate_answers(model, tokenizer, prompt_ids[:2], args)
    assert answers[0] == Answer(tokenizer.decode(free[0][:stop], skip_special_tokens=True).strip(), at_limit=False)
    assert answers[1] == Answer(tokenizer.decode(free[1], skip_special_tokens=True).strip(), at_limit=True)


def test_min_new_tokens_holds_the_eos_back(prompt_ids, tiny_model_dir):
    """Declare row 0's first token an eos: the answer is empty, unless --min_new_tokens forbids it that soon."""
    model, tokenizer, _ = load_for_inference(str(tiny_model_dir))
    free = generate_token_ids(model, tokenizer, prompt_ids[:1], GenerationArguments(max_new_tokens=NEW_TOKENS))[0]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, free[0]]
    assert generate_token_ids(model, tokenizer, prompt_ids[:1], GenerationArguments(max_new_tokens=NEW_TOKENS)) == [[]]
    held = generate_token_ids(model, tokenizer, prompt_ids[:1], GenerationArguments(max_new_tokens=NEW_TOKENS,
                                                                                   min_new_tokens=4))[0]
    assert len(held) >= 4 and free[0] not in held[:4]


def test_max_new_tokens_does_not_count_the_prompt(prompt_ids, tiny_model_dir):
    model, tokenizer, _ = load_for_inference(str(tiny_model_dir))
    longest = max(prompt_ids, key=len)
    assert len(longest) > 3
    assert len(generate_token_ids(model, tokenizer, [longest], GenerationArguments(max_new_tokens=3))[0]) == 3


def test_sampling_repeats_with_a_seed_and_keeps_the_callers_rng(prompt_ids, tiny_model_dir):
    model, tokenizer, _ = load_for_inference(str(tiny_model_dir))
    sample = GenerationArguments(max_new_tokens=NEW_TOKENS, do_sample=True, seed=3)
    torch.manual_seed(0)
    first = generate_token_ids(model, tokenizer, prompt_ids[:3], sample)
    after_generation = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_generation), "generation must not move the caller's RNG"
    assert generate_token_ids(model, tokenizer, prompt_ids[:3], sample) == first
    other_seed = GenerationArguments(max_new_tokens=NEW_TOKENS, do_sample=True, seed=4)
    assert generate_token_ids(model, tokenizer, prompt_ids[:3], other_seed) != first
    assert first != generate_token_ids(model, tokenizer, prompt_ids[:3], GenerationArguments(max_new_tokens=NEW_TOKENS))


def test_generation_arguments_name_the_bad_flag():
    with pytest.raises(ValueError, match="--max_new_tokens: expected at least 1, found 0"):
        GenerationArguments(max_new_tokens=0)
    with pytest.raises(ValueError, match="--top_p"):
        GenerationArguments(top_p=0.0)
    with pytest.raises(ValueError, match=r"--min_new_tokens: expected 0 to --max_new_tokens \(8\), found 9"):
        GenerationArguments(max_new_tokens=8, min_new_tokens=9)


def test_settings_name_min_new_tokens_only_when_set():
    assert "min_new_tokens" not in GenerationArguments().settings()  # outputs of earlier runs still match
    assert GenerationArguments(min_new_tokens=5).settings()["min_new_tokens"] == 5


def greedy_reference(model, ids: list[int], new_tokens: int, banned) -> list[int]:
    """Greedy decoding by hand, one full forward per token (no cache): ``banned(answer, scores)`` edits
    the next token's scores given the answer so far."""
    answer: list[int] = []
    with torch.no_grad():
        for _ in range(new_tokens):
            sequence = torch.tensor([ids + answer])
            scores = model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits[0, -1].float()
            answer.append(int(banned(answer, scores).argmax()))
    return answer


def penalised(penalty: float):
    """CTRL's repetition penalty over the answer's tokens only, written out."""
    def edit(answer, scores):
        scores = scores.clone()
        for token in set(answer):
            scores[token] = scores[token] / penalty if scores[token] > 0 else scores[token] * penalty
        return scores
    return edit


def no_repeat(n: int):
    """Ban each token that would complete an n-gram the answer already holds, written out."""
    def edit(answer, scores):
        scores = scores.clone()
        if len(answer) >= n - 1:
            tail = answer[len(answer) - n + 1:]
            for start in range(len(answer) - n + 1):
                if answer[start:start + n - 1] == tail:
                    scores[answer[start + n - 1]] = -float("inf")
        return scores
    return edit


def repeats(ids: list[int], n: int) -> bool:
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("flag, edit", [("repetition_penalty", penalised(3.0)), ("no_repeat_ngram_size", no_repeat(2))])
def test_repeat_penalties_equal_a_hand_written_greedy_loop(flag, edit, prompt_ids, tiny_model_dir):
    """Batched, left-padded, with the KV cache: the tokens of the penalty applied by hand to each row alone
    (causal, so that one forward over prompt and answer is what generation computes)."""
    model, tokenizer, _ = load_for_inference(str(tiny_model_dir), expect={"mask": "causal"})
    new_tokens = 48
    rows = list({len(ids): ids for ids in prompt_ids}.values())[:3]
    value = {"repetition_penalty": 3.0, "no_repeat_ngram_size": 2}[flag]
    free = generate_token_ids(model, tokenizer, rows, GenerationArguments(max_new_tokens=new_tokens))
    held = generate_token_ids(model, tokenizer, rows, GenerationArguments(max_new_tokens=new_tokens, **{flag: value}))
    assert held == [greedy_reference(model, ids, new_tokens, edit) for ids in rows]
    assert held != free, "the random model repeats itself, so the penalty must change its text"
    if flag == "no_repeat_ngram_size":
        assert any(repeats(ids, 2) for ids in free) and not any(repeats(ids, 2) for ids in held)


@pytest.mark.parametrize("flag, value", [("no_repeat_ngram_size", 2), ("repetition_penalty", 1e6)])
def test_repeat_penalties_let_the_answer_copy_the_prompt(flag, value, prompt_ids, tiny_model_dir):
    """A free answer that repeats a bigram, cut just before its second token's second use and appended to the
    prompt: the answer goes on with that token, which transformers' own flags (counting the prompt) ban."""
    model, tokenizer, _ = load_for_inference(str(tiny_model_dir), expect={"mask": "causal"})
    free = generate_token_ids(model, tokenizer, prompt_ids, GenerationArguments(max_new_tokens=48))
    looping = [(row, ids) for row, ids in enumerate(free) if repeats(ids, 2)]
    assert looping, "the test needs a free answer of the random model that repeats a bigram"
    row, answer = looping[0]
    grams = [tuple(answer[i:i + 2]) for i in range(len(answer) - 1)]
    second = next(j for j in range(len(grams)) if grams[j] in grams[:j])  # answer[second:second + 2] seen before
    prompt = prompt_ids[row] + answer[:second + 1]
    ours = generate_token_ids(model, tokenizer, [prompt], GenerationArguments(max_new_tokens=2, **{flag: value}))
    assert ours[0][0] == answer[second + 1]
    builtin = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id, **{flag: value})
    assert int(builtin[0, -1]) != answer[second + 1]


def test_settings_name_repeat_penalties_only_when_set():
    assert {"repetition_penalty", "no_repeat_ngram_size"}.isdisjoint(GenerationArguments().settings())
    settings = GenerationArguments(repetition_penalty=1.2, no_repeat_ngram_size=4).settings()
    assert (settings["repetition_penalty"], settings["no_repeat_ngram_size"]) == (1.2, 4)
    with pytest.raises(ValueError, match="--repetition_penalty: expected a positive value, found 0.0"):
        GenerationArguments(repetition_penalty=0.0)
    with pytest.raises(ValueError, match="--no_repeat_ngram_size: expected 0 or more, found -1"):
        GenerationArguments(no_repeat_ngram_size=-1)
