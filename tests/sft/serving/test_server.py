"""The OpenAI-compatible server over a real engine (embedded base, a P-tuning and a LoRA checkpoint),
talked to through the official ``openai`` client and, for what a client library would never send,
raw HTTP: answers, streaming, ``n`` and seeds, stop strings, every class of bad request, the API key,
a client that goes away mid-stream, and a request whose generation fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from contextlib import aclosing

import httpx2 as httpx
import openai
import pytest

import sft.serve
from tests.conftest import REPO
from tests.sft.serving.conftest import free_port

PROMPT = "类型#裙*颜色#红色*风格#复古"
NAMES = ["base", "adgen-pt", "adgen-lora"]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=60)


def chat(client, model: str, **settings):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], **settings)


def greedy(client, model: str, max_tokens: int = 24) -> str:
    return chat(client, model, temperature=0, max_tokens=max_tokens).choices[0].message.content


def test_models_lists_the_base_first_then_each_checkpoint(client):
    assert [model.id for model in client.models.list()] == NAMES
    assert client.models.retrieve("adgen-lora").id == "adgen-lora"


def test_model_picks_the_checkpoint(client, engine):
    answers = {name: chat(client, name, temperature=0, max_tokens=24) for name in NAMES}
    for name, answer in answers.items():
        assert answer.model == name and answer.object == "chat.completion"
        prompt_tokens = len(engine.chat_prompt(name, [{"role": "user", "content": PROMPT}]))
        assert answer.usage.prompt_tokens == prompt_tokens
        assert 0 < answer.usage.completion_tokens <= 24
        assert answer.usage.total_tokens == prompt_tokens + answer.usage.completion_tokens
    texts = [answer.choices[0].message.content for answer in answers.values()]
    assert len(set(texts)) == 3, texts  # the prefix and the adapter change the answer: routing is real


@pytest.mark.parametrize("model", ["adgen-pt", "adgen-lora"])
def test_a_stream_adds_up_to_the_whole_answer(client, model):
    whole = chat(client, model, temperature=0, max_tokens=24)
    chunks = list(chat(client, model, temperature=0, max_tokens=24, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert len(chunks) > 3  # it came in pieces
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()  # usage rides on the last chunk


def test_stream_options_include_usage_ends_with_a_usage_chunk(client):
    chunks = list(chat(client, "base", temperature=0, max_tokens=5, stream=True,
                       stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_the_stream_is_server_sent_events_ending_in_done(server):
    body = {"model": "adgen-pt", "prompt": PROMPT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.api}/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: {") for event in events[:-2])
    assert {p["object"] for p in payloads} == {"text_completion"}
    assert payloads[-1]["choices"][0]["finish_reason"] == "length" and payloads[-1]["usage"]["completion_tokens"] == 4


def test_completions_with_n_and_a_seed_repeat_and_differ_by_choice(client):
    def sample():
        answer = client.completions.create(model="adgen-pt", prompt=PROMPT, max_tokens=16, temperature=1.0, n=3, seed=11)
        return [choice.text for choice in sorted(answer.choices, key=lambda c: c.index)], answer.usage

    texts, usage = sample()
    assert sample()[0] == texts  # same seed, same answers
    assert len(set(texts)) == 3  # seeds 11, 12, 13
    # Choice i is the answer to the same request with n=1 and seed 11 + i; usage sums their completion
    # tokens (a choice may stop before 16) and counts the prompt once.
    singles = [client.completions.create(model="adgen-pt", prompt=PROMPT, max_tokens=16, temperature=1.0, seed=11 + i)
               for i in range(3)]
    assert [single.choices[0].text for single in singles] == texts
    assert usage.completion_tokens == sum(single.usage.completion_tokens for single in singles)
    assert usage.prompt_tokens == singles[0].usage.prompt_tokens > 0
    streamed = client.completions.create(model="adgen-pt", prompt=PROMPT, max_tokens=16, temperature=1.0, n=3,
                                         seed=11, stream=True)
    pieces = ["", "", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            pieces[choice.index] += choice.text
    assert pieces == texts


def test_a_stop_string_cuts_the_answer_before_it(client):
    full = greedy(client, "adgen-lora", max_tokens=32)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    answer = chat(client, "adgen-lora", temperature=0, max_tokens=32, stop=[stop, "never-there"])
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == full[: full.index(stop)].strip()


def test_max_tokens_ends_with_length(client):
    answer = chat(client, "base", temperature=0, max_tokens=3)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 3


CHAT = "/chat/completions"
MESSAGES = [{"role": "user", "content": PROMPT}]
# (path, raw body, status, code, param, what the message must hold)
BAD_REQUESTS = {
    "malformed JSON": (CHAT, '{"model": "base", "messages": [', 400, "invalid_json", None,
                       "could not parse the JSON body"),
    "not an object": (CHAT, "[1, 2]", 400, "invalid_request", None, "request body: expected an object, found [1, 2]"),
    "unknown model": (CHAT, {"model": "gpt-4", "messages": MESSAGES}, 404, "model_not_found", "model",
                      "The model 'gpt-4' does not exist: expected one of base, adgen-pt, adgen-lora"),
    "negative max_tokens": (CHAT, {"model": "base", "messages": MESSAGES, "max_tokens": -5}, 400, "invalid_request",
                            "max_tokens", "max_tokens: expected at least 1, found -5"),
    "max_tokens as a string": (CHAT, {"model": "base", "messages": MESSAGES, "max_tokens": "5"}, 400,
                               "invalid_request", "max_tokens", 'max_tokens: expected a valid integer, found "5"'),
    "temperature as a string": (CHAT, {"model": "base", "messages": MESSAGES, "temperature": "hot"}, 400,
                                "invalid_request", "temperature", "temperature: expected a valid number"),
    "stream as a string": (CHAT, {"model": "base", "messages": MESSAGES, "stream": "yes"}, 400, "invalid_request",
                           "stream", "stream: expected a valid boolean"),
    "stop of numbers": (CHAT, {"model": "base", "messages": MESSAGES, "stop": [1]}, 400, "invalid_request", "stop",
                        "stop: expected a string or a list of up to 4 strings, found [1]"),
    "n too large": (CHAT, {"model": "base", "messages": MESSAGES, "n": 99}, 400, "invalid_request", "n",
                    "n: expected at most 16, found 99"),
    "no messages": (CHAT, {"model": "base", "messages": []}, 400, "invalid_request", "messages",
                    "messages: expected at least 1 item(s), found []"),
    "message without content": (CHAT, {"model": "base", "messages": [{"role": "user"}]}, 400, "invalid_request",
                                "messages[0].content", "messages[0].content: expected a value, found none"),
    "last message not the user's": (CHAT, {"model": "base", "messages": [{"role": "assistant", "content": "hi"}]},
                                    400, "invalid_request", "messages", "messages[0]: expected role system or user"),
    "missing model": (CHAT, {"messages": MESSAGES}, 400, "invalid_request", "model", "model: expected a value"),
    "unknown argument": (CHAT, {"model": "base", "messages": MESSAGES, "best_of": 2}, 400, "invalid_request",
                         "best_of", "Unrecognized request argument supplied: best_of"),
    "prompt of token ids": ("/completions", {"model": "base", "prompt": [1, 2, 3]}, 400, "invalid_request", "prompt",
                            "prompt: expected a string or a non-empty list of strings, found [1, 2, 3]"),
    "answer longer than the model's positions": (
        CHAT, {"model": "adgen-pt", "messages": MESSAGES, "max_tokens": 5000}, 400, "invalid_request", "max_tokens",
        "max_tokens: expected at most"),
    "unknown route": ("/embeddings", {"model": "base", "input": "x"}, 404, "not_found", None,
                      "POST /v1/embeddings: Not Found"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_an_openai_error_and_the_server_keeps_serving(server, client, case):
    path, body, status, code, param, message = BAD_REQUESTS[case]
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server.api}{path}", content=content, headers={"Content-Type": "application/json"},
                          timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param), error
    assert message in error["message"], error
    assert chat(client, "base", temperature=0, max_tokens=2).choices[0].finish_reason == "length"


def test_the_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        chat(client, "no-such-model")
    with pytest.raises(openai.BadRequestError, match="max_tokens: expected at least 1"):
        chat(client, "base", max_tokens=-1)


def test_a_long_prompt_is_cut_as_sft_infer_cuts_it_and_one_beyond_the_model_is_refused(client, engine):
    """Up to the model's positions a prompt is cut to the checkpoint's max_source_length as training and
    ``sft.infer`` cut it (from the left, keeping the template's cue; usage shows what was kept); beyond them
    it is refused (400, context_length_exceeded), naming both lengths."""
    limit = engine.max_prompt_tokens("adgen-pt")
    long = "*".join(f"颜色#红色{i}" for i in range(40))
    answer = client.chat.completions.create(model="adgen-pt", messages=[{"role": "user", "content": long}],
                                            max_tokens=2, temperature=0)
    assert answer.usage.prompt_tokens == limit
    too_long = "*".join(f"颜色#红色{i}" for i in range(400))
    found = len(engine.chat_prompt("adgen-pt", [{"role": "user", "content": too_long}], truncate=False))
    positions = engine.servable("adgen-pt").group.max_positions
    assert found > positions
    for call in (lambda: client.chat.completions.create(model="adgen-pt",
                                                        messages=[{"role": "user", "content": too_long}]),
                 lambda: client.completions.create(model="adgen-pt", prompt=too_long, max_tokens=2)):
        with pytest.raises(openai.BadRequestError) as err:
            call()
        assert err.value.status_code == 400
        assert f"expected at most {positions} prompt tokens (the positions of model 'adgen-pt'), found" in str(err.value)
    assert greedy(client, "adgen-pt", max_tokens=2) is not None  # still serving


@pytest.fixture(scope="module")
def keyed(engine, start_server):
    return start_server(engine, api_key="s3cret")


def test_an_api_key_is_required_when_set(keyed):
    good = openai.OpenAI(base_url=keyed.api, api_key="s3cret", max_retries=0)
    assert [model.id for model in good.models.list()] == NAMES
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
            openai.OpenAI(base_url=keyed.api, api_key=key or "x", max_retries=0).models.list()
    response = httpx.post(f"{keyed.api}/chat/completions", content="{", timeout=30)  # the key before the body
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert "found no Authorization header" in response.json()["error"]["message"]
    assert httpx.get(f"{keyed.url}/", timeout=30).status_code == 200  # the page itself asks for the key


async def aenumerate(items):
    count = 0
    async for item in items:
        yield count, item
        count += 1


class WatchedEngine:
    """The real engine, but each generation is recorded when closed, and a seed of 666 (fail at once) or 667
    (fail after two pieces) makes one request's generation raise, as a bug in it would."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.closed: list[tuple[int, bool]] = []  # (tokens generated, finished) of each closed generation

    def __getattr__(self, name):
        return getattr(self.engine, name)

    async def generate(self, name, prompt_ids, params):
        tokens, finished = 0, False
        try:
            if params.seed == 666:
                raise RuntimeError("a bug in this request")
            async with aclosing(self.engine.generate(name, prompt_ids, params)) as deltas:
                async for count, delta in aenumerate(deltas):
                    if params.seed == 667 and count == 2:
                        raise RuntimeError("a bug in the middle of this request")
                    tokens, finished = delta.completion_tokens, delta.finish_reason is not None
                    yield delta
        finally:
            self.closed.append((tokens, finished))


@pytest.fixture(scope="module")
def watched(engine, start_server):
    watched = WatchedEngine(engine)
    return watched, start_server(watched)


def assert_closed_early(engine: WatchedEngine, before: int, max_tokens: int) -> None:
    """The engine's generation number ``before`` is closed within 10 s, unfinished, short of ``max_tokens``."""
    deadline = time.monotonic() + 10
    while len(engine.closed) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(engine.closed) > before, "the engine's generation was not closed after the client left"
    tokens, finished = engine.closed[before]
    assert not finished and tokens < max_tokens  # closed early, not run to the end


def test_a_client_that_disconnects_mid_stream_frees_its_slot(watched):
    engine, server = watched
    body = {"model": "adgen-pt", "messages": MESSAGES, "max_tokens": 900, "temperature": 1.0, "stream": True}
    before = len(engine.closed)
    with httpx.stream("POST", f"{server.api}/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if re.search(r'"content": "[^"]', line):
                break  # the first text arrived: hang up
    assert_closed_early(engine, before, max_tokens=900)


def test_a_client_that_disconnects_before_a_whole_answer_frees_its_slot(watched):
    """Not streamed: the server watches the connection while it collects the answer."""
    engine, server = watched
    # seed 11: this answer runs the whole 900 tokens when nobody hangs up (most seeds end within 60)
    body = {"model": "adgen-pt", "messages": MESSAGES, "max_tokens": 900, "temperature": 1.0, "seed": 11}
    before = len(engine.closed)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.api}/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.3))  # hangs up
    assert_closed_early(engine, before, max_tokens=900)
    client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=60)
    assert chat(client, "adgen-pt", max_tokens=4, seed=2).usage.completion_tokens >= 1  # still serving


def test_an_exception_in_one_request_fails_that_request_only(watched):
    _, server = watched
    client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=60)
    for _ in range(3):  # the same client (its kept-alive connection) goes on after each failure
        with pytest.raises(openai.InternalServerError, match="a bug in this request"):
            chat(client, "adgen-lora", max_tokens=8, seed=666)
        with pytest.raises(openai.APIError, match="a bug in the middle of this request"):
            list(chat(client, "adgen-lora", max_tokens=8, seed=667, stream=True))
        assert chat(client, "adgen-lora", max_tokens=8, seed=1).usage.completion_tokens >= 1  # still serving


def test_serve_flags():
    args = sft.serve.parse_args(["--checkpoint", "a=out/a", "b=out/b", "--checkpoint", "c=out/c"])
    assert args.checkpoints() == {"a": "out/a", "b": "out/b", "c": "out/c"}
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, os.environ.get("SFT_API_KEY"))
    with pytest.raises(ValueError, match=r"--checkpoint 'out/a': expected NAME=DIR; "
                                         r"--checkpoint: expected distinct names, found 'b' 2 times"):
        sft.serve.parse_args(["--checkpoint", "out/a", "b=x", "b=y"])


def test_python_m_sft_serve_answers_and_help_stays_light(served_checkpoints):
    """The real entry point: ``--help`` imports neither torch nor FastAPI; a server started with a key
    from ``SFT_API_KEY`` answers the openai client."""
    light = subprocess.run(
        [sys.executable, "-c", "import sys, sft.serve\ntry: sft.serve.main(['--help'])\nexcept SystemExit: pass\n"
                               "print(sorted(m for m in ('torch', 'fastapi', 'uvicorn') if m in sys.modules))"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert light.stdout.strip().splitlines()[-1] == "[]", light.stdout + light.stderr
    port = free_port()
    argv = [sys.executable, "-m", "sft.serve", "--port", str(port), "--checkpoint",
            f"adgen-pt={served_checkpoints['adgen-pt']}"]
    process = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "SFT_API_KEY": "k"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=30)
        deadline = time.monotonic() + 90
        while True:
            try:
                assert [m.id for m in client.models.list()] == ["base", "adgen-pt"]
                break
            except openai.APIConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.2)
        assert chat(client, "adgen-pt", max_tokens=3).usage.completion_tokens == 3
    finally:
        process.terminate()
        process.wait(timeout=30)

