"""The page at ``/`` in a real headless browser (Debian's chromium driven by playwright): a person enters
the API key, builds an attribute prompt, watches the answer stream in, then compares two checkpoints.

What the page shows must be what the API answers for the same request (greedy, so it repeats).
Chromium is part of what CI installs (``.ci/run``): without it this test fails, it does not skip.
A screenshot of the compare view is left in ``/tmp/serve_page.png`` for people to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import openai
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path("/tmp/serve_page.png")
KEY = "page-key"
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def page(engine, start_server):
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.fail(f"expected Debian's chromium at {CHROMIUM}, found none: run `apt-get install -y chromium` "
                    "(.ci/run installs it before the tests)")
    from playwright.sync_api import sync_playwright

    server = start_server(engine, api_key=KEY)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        page.goto(server.url + "/")
        yield page, server
        browser.close()


def api_answer(server, model: str, prompt: str) -> str:
    client = openai.OpenAI(base_url=server.api, api_key=KEY, max_retries=0, timeout=60)
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=MAX_TOKENS, temperature=0, top_p=0.8)
    return answer.choices[0].message.content


def generate(page) -> None:
    page.click("#generate")
    page.wait_for_selector("#generate:not([disabled])", timeout=60_000)  # every pane has finished


def test_the_page_asks_for_the_key_then_streams_an_answer(page):
    page, server = page
    page.wait_for_selector("#error:not([hidden])")
    assert "Incorrect API key" in page.inner_text("#error")  # the page could not list models without it
    page.fill("#key", KEY)
    page.click("#connect")
    page.wait_for_function("document.querySelectorAll('#model-a option').length === 3")
    assert page.eval_on_selector_all("#model-a option", "options => options.map(o => o.value)") == \
        ["base", "adgen-pt", "adgen-lora"]
    assert page.is_hidden("#error")

    for key, value in (("类型", "裙"), ("颜色", "红色")):
        page.fill("#attr-key", key)
        page.fill("#attr-value", value)
        page.click("#attr-add")
    assert page.input_value("#prompt") == "类型#裙*颜色#红色"
    page.select_option("#model-a", "adgen-pt")
    page.fill("#max-tokens", str(MAX_TOKENS))
    generate(page)

    assert page.get_attribute("#pane-a", "data-state") == "done", page.inner_text("#status-a")
    assert page.inner_text("#title-a") == "adgen-pt"
    assert page.inner_text("#answer-a") == api_answer(server, "adgen-pt", "类型#裙*颜色#红色")
    assert "tokens" in page.inner_text("#status-a")


def test_compare_streams_two_checkpoints_side_by_side(page):
    page, server = page
    page.check("#compare")
    page.select_option("#model-a", "adgen-pt")
    page.select_option("#model-b", "adgen-lora")
    page.fill("#prompt", "类型#上衣*材质#牛仔布*风格#街头")
    generate(page)

    for side, model in (("a", "adgen-pt"), ("b", "adgen-lora")):
        assert page.get_attribute(f"#pane-{side}", "data-state") == "done", page.inner_text(f"#status-{side}")
        assert page.inner_text(f"#title-{side}") == model
        assert page.inner_text(f"#answer-{side}") == api_answer(server, model, "类型#上衣*材质#牛仔布*风格#街头")
    assert page.inner_text("#answer-a") != page.inner_text("#answer-b")
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
