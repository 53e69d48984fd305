"""Tests for tools.synthetic: determinism, the row guarantees, and the checked-in sample files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tools import synthetic
from tools.synthetic import (
    generate_adgen_rows,
    generate_alpaca_rows,
    sample_files,
)

DATA = Path(__file__).resolve().parents[2] / "data"
SHARED_KEYS = {"类型", "版型", "材质", "颜色", "风格", "图案"}
# Written out here rather than imported, so a key leaking into the wrong kind is caught.
OWN_KEYS = {
    "上衣": {"衣样式", "衣领型", "衣袖型", "袖长", "衣长", "衣款式"},
    "裙": {"裙型", "裙长", "裙领型", "裙袖型", "裙腰型", "裙款式"},
    "裤": {"裤型", "裤长", "裤腰型", "裤款式"},
}
ASCII_PUNCTUATION = set(",.!?;:")
SIZES = {
    "adgen/train.json": 640, "adgen/dev.json": 100, "alpaca/train.json": 160, "alpaca/dev.json": 40,
}


def _pairs(content: str) -> list[tuple[str, str]]:
    parts = [item.split("#") for item in content.split("*")]
    assert all(len(part) == 2 and all(part) for part in parts), content
    return [(key, value) for key, value in parts]


def _mentioned(text: str, vocabulary: tuple[str, ...]) -> set[str]:
    """Words of ``vocabulary`` in ``text``, longest first so 白色 inside 米白色 does not count."""
    found = set()
    for word in sorted(vocabulary, key=len, reverse=True):
        if word in text:
            found.add(word)
            text = text.replace(word, "")
    return found


def _prompts(rows: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(row["instruction"], row["input"]) for row in rows}


@pytest.fixture(scope="module")
def adgen_rows() -> list[dict[str, str]]:
    return generate_adgen_rows(400, seed=11)


def _read_rows(relpath: str) -> list[dict[str, str]]:
    text = (DATA / relpath).read_text(encoding="utf-8")
    if relpath.startswith("alpaca/"):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("generate", [generate_adgen_rows, generate_alpaca_rows])
def test_same_seed_same_rows(generate: Callable[[int, int], list]) -> None:
    assert generate(30, 5) == generate(30, 5)
    assert generate(30, 5) != generate(30, 6)


def test_adgen_content_is_key_value_pairs_consistent_with_kind(adgen_rows) -> None:
    for row in adgen_rows:
        assert set(row) == {"content", "summary"}
        pairs = _pairs(row["content"])
        key, kind = pairs[0]
        assert key == "类型" and kind in OWN_KEYS, row
        keys = {key for key, _ in pairs}
        assert keys <= SHARED_KEYS | OWN_KEYS[kind], row
        assert keys & OWN_KEYS[kind], row
        assert len(pairs) == len(set(pairs)), row  # a key repeats only with another value


def test_adgen_summary_mentions_every_value(adgen_rows) -> None:
    for row in adgen_rows:
        pairs = _pairs(row["content"])
        for key, value in pairs[1:]:
            assert value in row["summary"], (key, value, row)
        if pairs[0][1] != "上衣":  # a top is named by its garment (衬衫...), not "上衣"
            assert pairs[0][1] in row["summary"], row


@pytest.mark.parametrize("key", ["颜色", "材质"])
def test_adgen_summary_names_exactly_the_row_colours_and_materials(adgen_rows, key) -> None:
    vocabulary = tuple(synthetic.NOTES[key])
    for row in adgen_rows:
        wanted = {value for k, value in _pairs(row["content"]) if k == key}
        assert _mentioned(row["summary"], vocabulary) == wanted, row


def test_adgen_summary_length_and_punctuation(adgen_rows) -> None:
    for row in adgen_rows:
        summary = row["summary"]
        assert synthetic.SUMMARY_MIN <= len(summary) <= synthetic.SUMMARY_MAX, summary
        assert summary[-1] in "。！" and "，" in summary, summary
        assert not ASCII_PUNCTUATION & set(summary), summary
    assert len({row["summary"] for row in adgen_rows}) == len(adgen_rows)


def test_alpaca_rows_have_three_strings_and_a_third_empty_inputs() -> None:
    for n in (40, 99, 160):
        rows = generate_alpaca_rows(n, seed=3)
        assert len(rows) == n
        for row in rows:
            assert set(row) == {"instruction", "input", "output"}, row
            assert all(isinstance(value, str) for value in row.values()), row
            assert row["instruction"] and row["output"], row
        assert sum(row["input"] == "" for row in rows) == n // 3


def test_sample_files_equal_generator_output() -> None:
    """data/ must be exactly what `python -m tools.synthetic --out_dir data` writes."""
    files = sample_files()
    assert set(files) == set(SIZES)
    for relpath, text in files.items():
        on_disk = (DATA / relpath).read_text(encoding="utf-8")
        assert on_disk == text, f"data/{relpath} is stale: python -m tools.synthetic --out_dir data"


def test_sample_files_format_and_sizes() -> None:
    for relpath, size in SIZES.items():
        assert len(_read_rows(relpath)) == size, relpath
    assert (DATA / "alpaca/train.json").read_text(encoding="utf-8").startswith("[\n {")
    first_line = (DATA / "adgen/train.json").read_text(encoding="utf-8").splitlines()[0]
    assert set(json.loads(first_line)) == {"content", "summary"} and "类型#" in first_line
    seeds = synthetic.SAMPLE_SEEDS
    assert _read_rows("adgen/train.json") == generate_adgen_rows(640, seeds["adgen"]["train"])
    assert _read_rows("alpaca/train.json") == generate_alpaca_rows(160, seeds["alpaca"]["train"])


def test_dev_and_train_are_disjoint() -> None:
    train, dev = _read_rows("adgen/train.json"), _read_rows("adgen/dev.json")
    assert not {row["content"] for row in train} & {row["content"] for row in dev}
    assert not {row["summary"] for row in train} & {row["summary"] for row in dev}
    train, dev = _read_rows("alpaca/train.json"), _read_rows("alpaca/dev.json")
    assert not _prompts(train) & _prompts(dev)
