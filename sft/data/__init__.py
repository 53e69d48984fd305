"""Dataset builder: rows of a user's file become ``input_ids`` and ``labels`` where only answers are supervised.

Stages, one module each:

* :mod:`sft.data.reading`: JSON Lines / JSON-array files into rows with line numbers; ``DataError``
  (the one reader of JSON Lines in the project).
* :mod:`sft.data.formats`: row schemas (``--format``) into turns, rendered by a template
  (:mod:`sft.data.templates`) into an :class:`Example`.
* :mod:`sft.data.encoding`: examples into ids and labels (``IGNORE_INDEX`` on the prompt),
  datasets for the Trainer, and the padding collator.
* :mod:`sft.data.check`: statistics before training (``python -m sft.data check``).

Names are loaded from their module on first use, so ``sft.data.DataArguments`` costs no torch import.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "DataArguments": "arguments",
    "IGNORE_INDEX": "encoding",
    "DataCollator": "encoding",
    "EncodedDataset": "encoding",
    "build_dataset": "encoding",
    "encode_example": "encoding",
    "encode_prompt": "encoding",
    "encode_prompt_counted": "encoding",
    "eos_id": "encoding",
    "pad_id": "encoding",
    "token_lengths": "encoding",
    "FORMATS": "formats",
    "Example": "formats",
    "load_examples": "formats",
    "read_examples": "formats",
    "DataError": "reading",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'sft.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sft.data.{_HOMES[name]}"), name)
