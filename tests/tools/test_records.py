"""tools.records: what the embedded base learns from, and what it must not see.

The records teach one skill (a header of key/value pairs -> a text naming every value) on things
that are not clothing, in header layouts that are not ADGEN's: P-tuning on data/adgen then has
something to steer, and something left to learn.
"""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from sft.embedded import DEFAULT_MODEL_DIR
from tools import synthetic
from tools.pretrain import encode_records
from tools.records import (
    GENERIC_PHRASINGS,
    GOODS_KINDS,
    HEADER_STYLES,
    KINDS,
    SYMBOL_KEY_SEPARATORS,
    SYMBOL_PAIR_SEPARATORS,
    _text,
    record_corpus,
    render_header,
)

WORDS = ("雨伞", "信封", "钥匙", "照片", "地图", "茶杯", "风筝", "围巾", "书包", "扇子")


def parse_header(header: str) -> list[tuple[str, str]]:
    """The pairs of a header in one of the four fixed layouts, read back independently of :func:`render_header`."""
    if header.startswith("【"):
        return [tuple(part.split("】", 1)) for part in header[1:].split("【")]
    for pair, separator in (("：", "；"), ("=", " "), (":", ",")):
        if pair in header:
            return [tuple(part.split(pair, 1)) for part in header.split(separator)]
    raise AssertionError(f"not a header: {header}")


def test_headers_render_in_both_layouts_and_never_in_adgens():
    pairs = [("类型", "沙发"), ("颜色", "卡其色"), ("图案", "条纹"), ("图案", "植物")]
    assert render_header(pairs, "colon") == "类型：沙发；颜色：卡其色；图案：条纹；图案：植物"
    assert render_header(pairs, "bracket") == "【类型】沙发【颜色】卡其色【图案】条纹【图案】植物"
    assert render_header(pairs, "ascii") == "类型:沙发,颜色:卡其色,图案:条纹,图案:植物"
    assert render_header(pairs, "equals") == "类型=沙发 颜色=卡其色 图案=条纹 图案=植物"
    assert render_header(pairs, "symbols", ("|", "/")) == "类型|沙发/颜色|卡其色/图案|条纹/图案|植物"
    with pytest.raises(ValueError, match="expected one of colon, bracket, ascii, equals, symbols, found 'adgen'"):
        render_header(pairs, "adgen")
    with pytest.raises(ValueError, match="expected two different separators, found"):
        render_header(pairs, "symbols", ("|", "|"))
    records = record_corpus(2000, seed=5, words=WORDS, open_share=0.3)
    headers = [r.split("\n", 1)[0] for r in records]
    assert not any("#" in h or "*" in h for h in headers)
    assert {next(s for s in HEADER_STYLES if render_header(parse_header(h), s) == h) for h in headers} == set(HEADER_STYLES)


@pytest.mark.parametrize("generic_share", [0.0, 0.3])
def test_every_value_of_a_header_is_named_in_its_text(generic_share):
    records = record_corpus(3000, seed=7, words=WORDS, open_share=0.3, generic_share=generic_share)
    for record in records:
        header, text = record.split("\n", 1)
        for key, value in parse_header(header):
            if key != "类别":
                assert value in text, (value, record)
    opened = sum(any(v in WORDS for _, v in parse_header(r.split("\n", 1)[0])) for r in records)
    assert opened > 0.3 * len(records)  # values copied from the word list, not learnable from the kind


def test_invented_keys_are_named_with_a_phrasing_for_any_key():
    """With generic_share, about that share of records has a key no kind has (a word of the list), and
    its clause is one of the phrasings for any key, with the key and the value in it."""
    known = {key for kind in (*KINDS, *GOODS_KINDS) for key in (kind.noun_key, *kind.fields)} | {"类别"}
    records = record_corpus(2000, seed=11, words=WORDS, open_share=0.3, generic_share=0.3)
    invented = [(record, key, value) for record in records
                for key, value in parse_header(record.split("\n", 1)[0]) if key not in known]
    assert 0.2 * len(records) < len(invented) < 0.4 * len(records)
    for record, key, value in invented:
        assert key in WORDS and value in WORDS
        text = record.split("\n", 1)[1]
        assert any(p.format(k=key, v=value) in text for p in GENERIC_PHRASINGS), record
    assert record_corpus(300, seed=3, words=WORDS, generic_share=0.0) == record_corpus(300, seed=3, words=WORDS)


def test_symbol_headers_draw_their_separators_per_record_and_never_adgens():
    """With symbol_share, that share of headers uses a separator pair of the pools (different per record,
    never ``#``/``*``), and their texts still name every value."""
    records = record_corpus(2000, seed=13, words=WORDS, open_share=0.3, symbol_share=0.25)
    symbol_records = []
    for record in records:
        header, text = record.split("\n", 1)
        assert not set(header) & set("#*＃＊"), header
        try:
            if any(render_header(parse_header(header), style) == header for style in HEADER_STYLES):
                continue
        except AssertionError:  # not a fixed layout
            pass
        # keys are 类别 (other kinds) or 类型 (goods): the key separator follows them; the pair separator
        # is the first pool character after the first value
        key_separator = header[2]
        pair_separator = next(c for c in header[3:] if c in SYMBOL_PAIR_SEPARATORS and c != key_separator)
        assert key_separator in SYMBOL_KEY_SEPARATORS
        pairs = [tuple(part.split(key_separator, 1)) for part in header.split(pair_separator)]
        assert render_header(pairs, "symbols", (key_separator, pair_separator)) == header
        assert all(value in text for key, value in pairs if key != "类别"), record
        symbol_records.append((key_separator, pair_separator))
    assert 0.2 * len(records) < len(symbol_records) < 0.3 * len(records)
    assert len(set(symbol_records)) > 50  # drawn per record, not one layout
    assert record_corpus(300, seed=3, words=WORDS, symbol_share=0.0) == record_corpus(300, seed=3, words=WORDS)


def test_long_headers_reach_adgens_lengths_and_name_every_value():
    """With long_share, about that share of headers has 6-9 keys besides 类别 (ADGEN's run to 9), filled
    with invented keys past the kind's own; the others keep 3-6; every value is still named."""
    records = record_corpus(2000, seed=17, words=WORDS, open_share=0.3, long_share=0.3)
    sizes = []
    for record in records:
        header, text = record.split("\n", 1)
        pairs = [(k, v) for k, v in parse_header(header) if k != "类别"]
        assert all(value in text for _, value in pairs), record
        sizes.append(len({k for k, _ in pairs}))
    assert max(sizes) == 9 and min(sizes) == 3
    # long headers are 6, 7, 8 or 9 keys alike, short ones at most 6: 7-9 keys is 3/4 of the long share
    assert 0.18 * len(records) < sum(size >= 7 for size in sizes) < 0.27 * len(records)
    short = record_corpus(2000, seed=17, words=WORDS, open_share=0.3)
    assert max(len({k for k, _ in parse_header(r.split("\n", 1)[0]) if k != "类别"}) for r in short) == 6


def test_a_text_outlasting_the_connectors_goes_on_without_one():
    """A header can make more sentences than there are connectors ("此外，", ...); a long one
    (ADGEN's run to 9 keys) did at pretraining's 40000 records and stopped the build. The text then goes
    on without a connector and still names every value."""
    kind = KINDS[0]
    for seed in range(50):
        header = {kind.noun_key: [kind.nouns[0]], **{f"键{i}": [f"值{i}"] for i in range(12)}}
        text = _text(kind, header, random.Random(seed), ordered_share=1.0)
        assert all(f"值{i}" in text for i in range(12)), text


@pytest.mark.parametrize("ordered_share", [0.0, 1.0])
def test_ordered_texts_name_the_values_in_header_order(ordered_share):
    def in_order(record: str) -> bool | None:
        header, text = record.split("\n", 1)
        values = [v for k, v in parse_header(header)[1:] if k != "类别"][1:]  # after the noun
        if len(values) < 3 or len(set(values)) < len(values):
            return None
        positions = [text.find(v) for v in values]
        return positions == sorted(positions)

    found = [in_order(r) for r in record_corpus(1000, seed=19, words=WORDS, ordered_share=ordered_share)]
    found = [f for f in found if f is not None]
    share = sum(found) / len(found)
    assert share > 0.95 if ordered_share else share < 0.4


def test_same_seed_same_records_and_goods_share():
    assert record_corpus(300, seed=3, words=WORDS) == record_corpus(300, seed=3, words=WORDS)
    assert record_corpus(300, seed=3, words=WORDS) != record_corpus(300, seed=4, words=WORDS)
    goods_nouns = {n for kind in GOODS_KINDS for n in kind.nouns}
    records = record_corpus(2000, seed=3, words=WORDS, goods_share=0.5)
    goods = sum(parse_header(r.split("\n", 1)[0])[0][1] in goods_nouns for r in records)
    assert 0.4 * len(records) < goods < 0.6 * len(records)


def test_no_kind_is_clothing():
    """Neither the goods nor the other kinds name a garment of the demo data's generator."""
    garments = {*synthetic.SKIRT_LENGTHS, *synthetic.SKIRT_SHAPES, *synthetic.PANTS_LENGTHS, "上衣", "裙", "裤",
                *synthetic.TOP_GARMENTS, *synthetic.PANTS_SHAPES}
    nouns = {n for kind in (*GOODS_KINDS, *KINDS) for n in kind.nouns}
    values = {v for kind in (*GOODS_KINDS, *KINDS) for bank, _ in kind.fields.values() for v in bank}
    assert not (nouns | values) & garments


def test_chat_records_are_laid_out_as_a_chatglm3_turn():
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    docs = ["类型：台灯；颜色：白色\n这款台灯，选用白色。", "【类别】植物【植物】竹子\n院子里种着竹子。"]
    chat = encode_records(tokenizer, docs, chat_share=1.0)
    plain = encode_records(tokenizer, docs, chat_share=0.0)
    for (ids, header), doc in zip(chat, docs):
        head, text = doc.split("\n", 1)
        assert tokenizer.decode(ids[:header]) == f"[gMASK]sop<|user|>\n{head}<|assistant|>\n"
        assert tokenizer.decode(ids[header:]) == text + "</s>"
    for (ids, header), doc in zip(plain, docs):
        assert tokenizer.decode(ids[:header]) == doc.split("\n", 1)[0] + "\n"
        assert tokenizer.decode(ids[header:]) == doc.split("\n", 1)[1] + "</s>"
    mixed = encode_records(tokenizer, docs * 200, chat_share=0.5, seed=1)
    share = sum(ids[0] == tokenizer.convert_tokens_to_ids("[gMASK]") for ids, _ in mixed) / len(mixed)
    assert 0.4 < share < 0.6
    assert mixed == encode_records(tokenizer, docs * 200, chat_share=0.5, seed=1)
