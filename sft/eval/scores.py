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

``python -m sft.metrics --predictions FILE`` scores a predictions file (:mod:`sft.metrics`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import jieba
import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge
from tqdm import tqdm

logger = logging.getLogger(__name__)

ROUGE_KEYS = ("rouge-1", "rouge-2", "rouge-l")
METRIC_KEYS = (*ROUGE_KEYS, "bleu-4")
PROGRESS_MIN_ROWS = 200  # show a progress bar only above this many rows
_ROUGE = Rouge()
_BLEU_SMOOTHING = SmoothingFunction().method3


@functools.cache
def _init_jieba() -> None:
    """Silence jieba's start-up chatter, then load its dictionary (once, on first use)."""
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()


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
    scores = dict.fromkeys(ROUGE_KEYS, 0.0)
    if not _is_blank(reference):
        _init_jieba()
        rouge = _ROUGE.get_scores(" ".join(jieba.cut(prediction)), " ".join(jieba.cut(reference)))[0]
        scores = {key: round(rouge[key]["f"] * 100, 4) for key in ROUGE_KEYS}
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=_BLEU_SMOOTHING)
    scores["bleu-4"] = round(bleu * 100, 4)
    return scores


def score_corpus(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float | int]:
    """Mean of each :func:`score_pair` metric over the rows, plus ``n`` rows and ``empty`` rows.

    ``empty`` counts empty or whitespace-only predictions (they score 0 and stay in the means).
    Shows a progress bar on stderr above ``PROGRESS_MIN_ROWS`` rows.
    """
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
    result: dict[str, float | int] = {key: float(np.mean(values)) for key, values in per_metric.items()}
    result["n"] = len(predictions)
    result["empty"] = sum(_is_blank(prediction) for prediction in predictions)
    return result
