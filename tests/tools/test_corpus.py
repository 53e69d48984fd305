"""The embedded base model's pretraining corpus never holds the P-tuning demo's answers.

``test_shipped_corpus_...`` rebuilds the document list of the shipped model exactly as
``tools.pretrain`` read it (same sources, ``pretrain_args.json``'s seed, record count and shares)
and looks for every ``data/adgen`` summary and every 20-character piece of one. The corpus
packages come with the test dependencies (``.[dev]`` includes ``.[pretrain]``), so it runs everywhere.
"""

from __future__ import annotations

import json

from sft.embedded import DEFAULT_MODEL_DIR
from tests.conftest import REPO
from tools import corpus
from tools.pretrain import ARGS_FILE, PretrainArguments, load_sources
from tools.records import record_corpus


def adgen_answers() -> list[str]:
    return [
        json.loads(line)["summary"]
        for name in ("train.json", "dev.json")
        for line in (REPO / "data" / "adgen" / name).read_text("utf-8").splitlines()
        if line.strip()
    ]


def shipped_args() -> PretrainArguments:
    recorded = json.loads((DEFAULT_MODEL_DIR / ARGS_FILE).read_text("utf-8"))
    return PretrainArguments(**{**recorded, "output_dir": "unused", "tokenizer_dir": str(DEFAULT_MODEL_DIR)})


def test_shared_passages_finds_a_planted_answer_and_a_piece_of_one():
    answer = adgen_answers()[7]
    documents = ["三国演义的一段。", f"前文{answer}后文", "无关" + answer[30:52] + "的文字", answer[:19]]
    found = corpus.shared_passages(documents, [answer])
    assert [index for index, _ in found] == [1, 2]
    assert all(len(passage) == 20 and passage in answer for _, passage in found)


def test_records_hold_no_adgen_answer():
    records = record_corpus(5000, seed=1234)
    assert corpus.shared_passages(records, adgen_answers()) == []


def test_shipped_corpus_holds_no_adgen_answer():
    args = shipped_args()
    assert args.corpus_file is None
    documents = [doc for _, docs in load_sources(args) for doc in docs]
    assert len(documents) > 30_000
    assert corpus.shared_passages(documents, adgen_answers()) == []
