"""ROUGE-1/2/L and BLEU-4 scored exactly as THUDM's ChatGLM ``ptuning/main.py`` scores them.

Per row, as in ChatGLM-6B / ChatGLM2-6B ``compute_metrics``:

* ROUGE: ``rouge_chinese.Rouge().get_scores`` on the jieba words joined by spaces; the
  F value x100, rounded to 4 places. (rouge-chinese sets n-grams apart, i.e. counts each
  distinct n-gram once, and its ROUGE-L is one LCS over all words; punctuation is an
  ordinary word to it.)
* BLEU-4: nltk ``sentence_bleu`` on characters with ``SmoothingFunction().method3``, x100,
  rounded to 4 places.

The corpus score is the mean of each per-row list. One deliberate difference: ChatGLM
crashes on an empty prediction (rouge-chinese raises "Hypothesis is empty."); here an empty
or whitespace-only prediction scores 0 on every metric and is counted in ``empty``. A
blank reference likewise scores 0 ROUGE instead of raising "Reference is empty.".

Two scores of our own say what ROUGE hides in ad copy written from attributes:

* ``attribute_recall``: for prompts in ADGEN's ``key#value*key#value`` form, the share of the
  prompt's distinct values that appear verbatim in the prediction (x100), averaged over the rows
  whose prompt has such values (``null`` when none has). A fluent paragraph about the wrong
  product scores ROUGE from template phrases but no recall.
* ``distinct``: the share of distinct predictions among all rows (x100); a model that writes
  the same paragraph for every prompt scores low.

``python -m sft.metrics --predictions FILE`` scores a predictions file (:mod:`sft.metrics`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

ROUGE_KEYS = ("rouge-1", "rouge-2", "rouge-l")
METRIC_KEYS = (*ROUGE_KEYS, "bleu-4")
CORPUS_KEYS = (*METRIC_KEYS, "attribute_recall", "distinct")  # what score_corpus averages or counts as a score
PROGRESS_MIN_ROWS = 200  # show a progress bar only above this many rows
# key#value in ADGEN prompts; a value ends at '*', whitespace or the markup a template puts around it.
_ATTRIBUTE = re.compile(r"[^\s#*<>|\[\]]+#([^\s#*<>|\[\]]+)")


class _Scorers(NamedTuple):
    cut: Callable  # jieba.cut
    rouge: object  # rouge_chinese.Rouge()
    bleu: Callable  # nltk's sentence_bleu with ChatGLM's smoothing (method3)


@functools.cache
def _scorers() -> _Scorers:
    """jieba (its dictionary loaded, its start-up chatter silenced), rouge-chinese and nltk's BLEU, imported on
    first use: nltk alone brings scikit-learn and pandas, about 90 MB of a training process's peak memory
    and 1.5 s of its start, which training without generation never uses."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return _Scorers(jieba.cut, Rouge(), functools.partial(sentence_bleu, smoothing_function=SmoothingFunction().method3))


def _is_blank(text: str) -> bool:
    # jieba keeps every character, so a text is blank exactly when its space-joined words are,
    # which is when rouge-chinese finds no sentence in it (it rstrips, then drops empty ones).
    return not text.strip()


def score_pair(prediction: str, reference: str) -> dict[str, float]:
    """Score one prediction against its reference, as ChatGLM's ``compute_metrics`` does per row.

    Returns ``{"rouge-1", "rouge-2", "rouge-l", "bleu-4"}``, each x100 and rounded to 4 places.
    An empty or whitespace-only prediction scores 0 on every metric; a blank reference scores
    0 ROUGE (BLEU is still nltk's).
    """
    if _is_blank(prediction):
        return dict.fromkeys(METRIC_KEYS, 0.0)
    scorers = _scorers()
    scores = dict.fromkeys(ROUGE_KEYS, 0.0)
    if not _is_blank(reference):
        rouge = scorers.rouge.get_scores(" ".join(scorers.cut(prediction)), " ".join(scorers.cut(reference)))[0]
        scores = {key: round(rouge[key]["f"] * 100, 4) for key in ROUGE_KEYS}
    bleu = scorers.bleu([list(reference)], list(prediction))
    scores["bleu-4"] = round(bleu * 100, 4)
    return scores


def prompt_values(prompt: str) -> list[str]:
    """The distinct attribute values of a ``key#value*key#value`` prompt (raw or rendered by a template)."""
    return list(dict.fromkeys(_ATTRIBUTE.findall(prompt)))


def attribute_recall(prediction: str, prompt: str) -> float | None:
    """Share of the prompt's distinct values found verbatim in ``prediction`` (0-1); ``None`` without values."""
    values = prompt_values(prompt)
    if not values:
        return None
    return sum(value in prediction for value in values) / len(values)


def score_corpus(
    predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str] | None = None
) -> dict[str, float | int | None]:
    """Mean of each :func:`score_pair` metric over the rows, ``distinct``, ``attribute_recall`` (with
    ``prompts``), plus ``n`` rows and ``empty`` rows.

    ``empty`` counts empty or whitespace-only predictions (they score 0 and stay in the means).
    Shows a progress bar on stderr above ``PROGRESS_MIN_ROWS`` rows.
    """
    if prompts is not None and len(prompts) != len(predictions):
        raise ValueError(f"score_corpus: expected a prompt per prediction ({len(predictions)}), found {len(prompts)}")
    if len(predictions) != len(references):
        raise ValueError(
            f"score_corpus: expected as many references as predictions ({len(predictions)}), "
            f"found {len(references)}"
        )
    if not predictions:
        raise ValueError("score_corpus: expected at least one prediction, found none")
    per_metric: dict[str, list[float]] = {key: [] for key in METRIC_KEYS}
    rows = tqdm(
        zip(predictions, references),
        total=len(predictions),
        desc="scoring",
        disable=len(predictions) <= PROGRESS_MIN_ROWS,
    )
    for prediction, reference in rows:
        for key, value in score_pair(prediction, reference).items():
            per_metric[key].append(value)
    result: dict[str, float | int | None] = {key: float(np.mean(values)) for key, values in per_metric.items()}
    recalls = [attribute_recall(p, prompt) for p, prompt in zip(predictions, prompts or [])]
    recalls = [recall for recall in recalls if recall is not None]
    result["attribute_recall"] = 100 * float(np.mean(recalls)) if recalls else None
    result["distinct"] = 100 * len(set(predictions)) / len(predictions)
    result["n"] = len(predictions)
    result["empty"] = sum(_is_blank(prediction) for prediction in predictions)
    return result
