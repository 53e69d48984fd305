"""The serving engine on the embedded model with checkpoints trained in process: two P-tuning prefixes
(ADGEN with prefix-LM masking, alpaca with a projected prefix and causal masking), one LoRA adapter and
one full checkpoint. Greedy answers are compared with ``sft.infer``'s for the same checkpoint, alone
and in one mixed concurrent batch, which is the independent computation: ``generate()`` of one
unpadded row with the checkpoint's own prefix encoder, peft model or weights."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from sft.serving import batch as batch_module
from sft.serving import scheduler as scheduler_module
from sft.serving.engine import Engine, RequestError, SamplingParams
from sft.serving.text import TextStream
from tests.conftest import REPO, run_in_process
from tests.sft.serving.conftest import train_embedded

PROMPTS = ("类型#上衣*颜色#红色", "类型#裙*版型#显瘦*风格#文艺*图案#碎花*裙长#连衣裙")
MAX_TOKENS = 24
LONG_PROMPT = "类型#裤*版型#宽松*材质#牛仔"  # the base, greedy, writes more than 40 tokens before it stops
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)


@pytest.fixture(scope="module")
def checkpoints(served_checkpoints, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("engine")
    alpaca = train_embedded(root / "alpaca", "ptuning", "--train_file", str(REPO / "data/alpaca/train.json"),
                            "--format", "alpaca", "--template", "alpaca", "--mask", "causal", "--pre_seq_len", "4",
                            "--prefix_projection", "--max_source_length", "128", "--learning_rate", "0.02")
    full = train_embedded(root / "full", "full", "--learning_rate", "1e-3")
    return {"adgen-pt": str(served_checkpoints["adgen-pt"]), "alpaca-pt": str(alpaca),
            "adgen-lora": str(served_checkpoints["adgen-lora"]), "full": str(full)}


@pytest.fixture(scope="module")
def mixed_engine(checkpoints):
    engine = Engine.load("embedded", checkpoints, max_batch_size=16)
    engine.start()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(checkpoints) -> dict[tuple[str, str], str]:
    """``sft.infer --checkpoint DIR --prompt P`` (greedy, MAX_TOKENS new tokens) for every name and prompt."""
    answers = {}
    for name, directory in {"base": "embedded", **checkpoints}.items():
        for prompt in PROMPTS:
            ran = run_in_process("sft.infer", "--checkpoint", directory, "--prompt", prompt,
                                 "--max_new_tokens", MAX_TOKENS)
            assert ran.returncode == 0, ran.stderr
            answers[name, prompt] = ran.stdout.removesuffix("\n")
    return answers


async def collect(engine: Engine, name: str, prompt: str, params: SamplingParams = GREEDY) -> list:
    return [delta async for delta in engine.generate(name, engine.completion_prompt(name, prompt), params)]


def text(deltas) -> str:
    return "".join(delta.text for delta in deltas)


@pytest.fixture
def batch_sizes(monkeypatch) -> list[set[str]]:
    """The servable names of the rows of every decoding step, as they run."""
    seen: list[set[str]] = []
    step = batch_module.DecodeBatch.step

    def recording(self):
        seen.append({row.servable.name for row in self.rows} | {f"rows={len(self.rows)}"})
        return step(self)

    monkeypatch.setattr(batch_module.DecodeBatch, "step", recording)
    return seen


def test_greedy_answers_equal_sft_infer_alone_and_in_one_mixed_batch(mixed_engine, reference, batch_sizes):
    names = mixed_engine.names
    assert names == ["base", "adgen-pt", "alpaca-pt", "adgen-lora", "full"]
    # guard: every checkpoint answers differently from the others, so a lost prefix or adapter would show
    assert len({reference[name, PROMPTS[1]] for name in names}) == len(names)
    for name in names:
        for prompt in PROMPTS:
            assert text(asyncio.run(collect(mixed_engine, name, prompt))) == reference[name, prompt], (name, prompt)

    async def everything():
        return await asyncio.gather(*(collect(mixed_engine, n, p) for n in names for p in PROMPTS))

    batch_sizes.clear()
    answers = asyncio.run(everything())
    assert [text(a) for a in answers] == [reference[n, p] for n in names for p in PROMPTS]
    # the base's group decoded base, both prefixes and the LoRA rows in one forward
    assert any({"base", "adgen-pt", "alpaca-pt", "adgen-lora", "rows=8"} <= step for step in batch_sizes)


def test_a_request_joins_a_running_batch_and_a_cancelled_one_leaves(mixed_engine, reference, batch_sizes,
                                                                   monkeypatch):
    long = SamplingParams(max_tokens=40, temperature=0)
    alone = text(asyncio.run(collect(mixed_engine, "base", LONG_PROMPT, long)))
    # Whatever the machine's load: the first request waits at its 6th step until the joiner was submitted.
    submitted, submit, step = threading.Event(), scheduler_module.Scheduler.submit, batch_module.DecodeBatch.step

    def submit_and_tell(self, request):
        submit(self, request)
        if request.servable.name == "adgen-pt":
            submitted.set()

    def gated(self):
        if len(batch_sizes) == 5:
            assert submitted.wait(timeout=60)
        return step(self)

    monkeypatch.setattr(scheduler_module.Scheduler, "submit", submit_and_tell)
    monkeypatch.setattr(batch_module.DecodeBatch, "step", gated)

    async def scenario():
        first = mixed_engine.generate("base", mixed_engine.completion_prompt("base", LONG_PROMPT), long)
        head = [await anext(first) for _ in range(3)]
        quitter = mixed_engine.generate("alpaca-pt", mixed_engine.completion_prompt("alpaca-pt", PROMPTS[0]), long)
        await anext(quitter)
        await quitter.aclose()  # a client that disconnects
        joined = asyncio.create_task(collect(mixed_engine, "adgen-pt", PROMPTS[0]))
        rest = [delta async for delta in first]
        return head + rest, await joined

    batch_sizes.clear()
    first, joined = asyncio.run(scenario())
    assert text(first) == alone and first[-1].finish_reason == "length" and first[-1].completion_tokens == 40
    assert text(joined) == reference["adgen-pt", PROMPTS[0]]
    assert {"base", "adgen-pt", "rows=2"} in batch_sizes  # it joined while the first one ran
    assert not any("alpaca-pt" in step and "adgen-pt" in step for step in batch_sizes)  # the quitter had left
    deadline = time.monotonic() + 10  # the decode thread drops a row right after handing over its last piece
    while mixed_engine._scheduler.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mixed_engine._scheduler.running() == 0


def test_newcomers_that_all_left_during_their_prefill_merge_as_nothing(mixed_engine, reference):
    """A request cancelled while it was prefilled leaves an empty newcomer batch: merging it changes nothing."""
    from sft.serving.batch import DecodeBatch

    group = mixed_engine.catalog.groups[0]
    running, _ = DecodeBatch.prefill(group, [batch_module.Row.start(_FakeRequest(mixed_engine, "base"))])
    before = running.padding.clone()
    running.merge(DecodeBatch(group))
    assert len(running) == 1 and torch.equal(running.padding, before)
    assert text(asyncio.run(collect(mixed_engine, "base", PROMPTS[0]))) == reference["base", PROMPTS[0]]


class _FakeRequest:
    cancelled = False

    def __init__(self, engine: Engine, name: str) -> None:
        self.servable = engine.servable(name)
        self.prompt_ids = engine.completion_prompt(name, PROMPTS[0])
        self.params = GREEDY

    def emit(self, *args) -> None:
        pass


def test_streamed_pieces_add_up_and_stop_strings_cut_before_the_stop(mixed_engine, reference):
    answer = reference["adgen-lora", PROMPTS[1]]
    deltas = asyncio.run(collect(mixed_engine, "adgen-lora", PROMPTS[1]))
    assert len(deltas) > 3 and text(deltas) == answer
    assert all(d.finish_reason is None for d in deltas[:-1]) and deltas[-1].prompt_tokens > 0
    stop = answer[6:8]
    assert stop.strip() and answer.find(stop) > 0
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, stop=("没有这个", stop))
    stopped = asyncio.run(collect(mixed_engine, "adgen-lora", PROMPTS[1], params))
    assert text(stopped) == answer[: answer.find(stop)].strip()
    assert stopped[-1].finish_reason == "stop" and stopped[-1].completion_tokens < MAX_TOKENS


def test_stream_holds_back_what_a_stop_string_or_the_final_strip_could_take():
    pieces = {1: " Hi", 2: " there\n", 3: "\nU", 4: "ser: more"}
    stream = TextStream(lambda ids: "".join(pieces[i] for i in ids), stop=("\n\nUser:",))
    assert [stream.push(i) for i in (1, 2, 3)] == [("Hi", False), (" there", False), ("", False)]
    assert stream.push(4) == ("", True) and stream.finish() == "" and stream.emitted == "Hi there"


def test_seeded_sampling_repeats_alone_and_in_a_batch(mixed_engine):
    sampled = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=11)
    alone = text(asyncio.run(collect(mixed_engine, "adgen-pt", PROMPTS[0], sampled)))

    async def crowded():
        others = [collect(mixed_engine, name, PROMPTS[1], SamplingParams(max_tokens=16, seed=seed))
                  for seed, name in enumerate(mixed_engine.names)]
        return await asyncio.gather(collect(mixed_engine, "adgen-pt", PROMPTS[0], sampled), *others)

    assert text(asyncio.run(crowded())[0]) == alone
    reseeded = {text(asyncio.run(collect(mixed_engine, "adgen-pt", PROMPTS[0],
                                         SamplingParams(max_tokens=16, seed=seed)))) for seed in (1, 2, 3)}
    assert len(reseeded | {alone}) > 1  # guard: the seed decides the text


def test_a_row_that_fails_fails_alone(mixed_engine, reference, monkeypatch):
    sample_row = scheduler_module.sample_row

    def failing(logits, greedy, row):
        if row.request.params.seed == 666:
            raise FloatingPointError("poisoned row")
        return sample_row(logits, greedy, row)

    monkeypatch.setattr(scheduler_module, "sample_row", failing)

    async def both():
        poisoned = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, seed=666)
        return await asyncio.gather(collect(mixed_engine, "base", PROMPTS[0], poisoned),
                                    collect(mixed_engine, "adgen-pt", PROMPTS[0]), return_exceptions=True)

    failed, served = asyncio.run(both())
    assert isinstance(failed, FloatingPointError)
    assert text(served) == reference["adgen-pt", PROMPTS[0]]


def test_bad_requests_raise_request_errors_that_say_what_was_expected(mixed_engine):
    ids = mixed_engine.completion_prompt("base", PROMPTS[0])

    def first(name, prompt_ids, params=GREEDY):
        return asyncio.run(anext(mixed_engine.generate(name, prompt_ids, params)))

    with pytest.raises(RequestError, match="model: expected one of base, adgen-pt.*found 'nope'"):
        first("nope", ids)
    limit = mixed_engine.max_prompt_tokens("base")
    with pytest.raises(RequestError, match=f"prompt: expected at most {limit} tokens for model base, found {limit + 1}"):
        first("base", [5] * (limit + 1))
    with pytest.raises(RequestError, match=r"token ids in \[0, 8000\)"):
        first("base", [8000])
    with pytest.raises(RequestError, match="max_tokens: expected at most"):
        first("base", ids, SamplingParams(max_tokens=5000))
    with pytest.raises(RequestError, match=r"temperature: expected .* found -1; top_p: expected .* found 0"):
        SamplingParams(temperature=-1, top_p=0)
    with pytest.raises(RequestError, match=r"messages\[1\]: expected role assistant"):
        mixed_engine.chat_prompt("base", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(RequestError, match=r"messages\[0\]: expected the last message to be the user's"):
        mixed_engine.chat_prompt("base", [{"role": "system", "content": "a"}])


def test_chat_prompts_use_each_checkpoints_template(mixed_engine):
    for name in mixed_engine.names:
        single = mixed_engine.chat_prompt(name, [{"role": "user", "content": PROMPTS[0]}])
        assert single == mixed_engine.completion_prompt(name, PROMPTS[0])
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "好的"}, {"role": "user", "content": "再见"}]
    tokenizer = mixed_engine.catalog.groups[0].tokenizer
    assert tokenizer.decode(mixed_engine.chat_prompt("adgen-pt", messages)) == (
        "[gMASK]sop<|system|>\n你是助手<|user|>\n你好<|assistant|>\n好的<|user|>\n再见<|assistant|>\n")
    alpaca = mixed_engine.chat_prompt("alpaca-pt", [{"role": "user", "content": "你好"}])
    assert tokenizer.decode(alpaca).endswith("appropriately completes the request.\n\n### Instruction:\n你好\n\n### Response:")
    assert len(alpaca) == mixed_engine.max_prompt_tokens("alpaca-pt") == 128  # cut from the left, as sft.infer cuts


def test_the_openai_client_gets_sft_infers_answer_from_each_checkpoint_concurrently(mixed_engine, reference,
                                                                                   start_server, batch_sizes):
    """The acceptance of serving, end to end: the official client, over HTTP, all checkpoints at once."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    client = openai.OpenAI(base_url=start_server(mixed_engine).api, api_key="unused", max_retries=0)
    asks = [(name, prompt) for name in mixed_engine.names for prompt in PROMPTS]

    def ask(pair):
        name, prompt = pair
        answer = client.completions.create(model=name, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        return answer.choices[0].text

    batch_sizes.clear()
    with ThreadPoolExecutor(len(asks)) as pool:
        answers = list(pool.map(ask, asks))
    assert answers == [reference[pair] for pair in asks]
    assert any({"adgen-pt", "alpaca-pt", "adgen-lora"} <= step for step in batch_sizes)  # decoded together
