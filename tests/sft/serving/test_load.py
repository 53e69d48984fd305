"""Load: 200 requests from 16 concurrent clients over every checkpoint, both endpoints, streamed and not,
a fifth of them bad on purpose. Each gets exactly the answer it asked for (200 with text, or the
4xx its mistake deserves), and the server process's memory does not grow over the run."""

from __future__ import annotations

import gc
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import psutil

REQUESTS, CLIENTS = 200, 16
MODELS = ["base", "adgen-pt", "adgen-lora"]
PROMPTS = ["类型#裙*颜色#红色", "类型#上衣*材质#牛仔布*风格#街头", "类型#裤*版型#宽松", "类型#鞋*风格#休闲*颜色#黑色"]
BAD = [  # (raw body, expected status)
    ('{"model": "adgen-pt", "messages": [', 400),
    ('{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404),
    ('{"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400),
    ('{"model": "base", "messages": [{"role": "user", "content": "x"}], "temperature": "warm"}', 400),
    ('{"model": "adgen-lora", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4096}', 400),
]
GROWTH_LIMIT_MB = 40


def plan(seed: int, count: int) -> list[tuple[str, str, int]]:
    """``(path, body, expected status)``: good requests of every kind, every fifth one bad."""
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        if i % 5 == 4:
            body, status = rng.choice(BAD)
            requests.append(("/chat/completions", body, status))
            continue
        model, prompt, stream = rng.choice(MODELS), rng.choice(PROMPTS), rng.random() < 0.5
        settings = {"model": model, "max_tokens": rng.randint(4, 12), "temperature": rng.choice([0, 0.9]),
                    "seed": i, "stream": stream}
        if rng.random() < 0.5:
            requests.append(("/chat/completions", json.dumps({**settings, "messages": [{"role": "user", "content": prompt}]}), 200))
        else:
            requests.append(("/completions", json.dumps({**settings, "prompt": prompt}), 200))
    return requests


def send(client: httpx.Client, path: str, body: str, expected: int) -> str | None:
    """None if the answer is what ``expected`` promises, else what went wrong."""
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    if response.status_code != expected:
        return f"{path} {body[:80]}: expected {expected}, found {response.status_code} {response.text[:200]}"
    if expected != 200:
        return None if set(response.json()["error"]) == {"message", "type", "param", "code"} else response.text
    if json.loads(body).get("stream"):
        events = response.text.split("\n\n")
        ok = events[-2] == "data: [DONE]" and '"finish_reason": "' in events[-3] and '"error"' not in response.text
    else:
        answer = response.json()
        ok = answer["choices"][0]["finish_reason"] in ("stop", "length") and answer["usage"]["completion_tokens"] > 0
    return None if ok else f"{path} {body[:80]}: unexpected answer {response.text[-300:]}"


def run(server, requests: list[tuple[str, str, int]]) -> list[str]:
    clients = [httpx.Client(base_url=server.api, timeout=120) for _ in range(CLIENTS)]
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = pool.map(lambda job: send(clients[job[0] % CLIENTS], *job[1]), enumerate(requests))
            return [problem for problem in results if problem]
    finally:
        for client in clients:
            client.close()


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def test_200_mixed_requests_from_16_clients(server):
    assert run(server, plan(0, 48)) == []  # warm-up: every batch size and code path allocated once
    before = rss_mb()
    start = time.monotonic()
    problems = run(server, plan(1, REQUESTS))
    seconds = time.monotonic() - start
    after = rss_mb()
    print(f"{REQUESTS} requests from {CLIENTS} clients in {seconds:.1f} s; RSS {before:.0f} -> {after:.0f} MB")
    assert problems == []
    assert after - before < GROWTH_LIMIT_MB, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
