"""Dataset builder: rows of a user's file become ``input_ids`` and ``labels`` where only answers are supervised.

Stages, one module each:

* :mod:`sft.data.reading`: JSON Lines / JSON-array files into rows with line numbers; ``DataError``.
* :mod:`sft.data.formats`: row schemas (``--format``) into turns, rendered by a template
  (:mod:`sft.templates`) into an :class:`Example`.
* :mod:`sft.data.encoding`: examples into ids and labels (``IGNORE_INDEX`` on the prompt),
  datasets for the Trainer, and the padding collator.
* :mod:`sft.data.check`: ``python -m sft.data check``, statistics before training.
"""

from sft.data.arguments import DataArguments
from sft.data.check import main
from sft.data.encoding import (
    IGNORE_INDEX,
    DataCollator,
    EncodedDataset,
    build_dataset,
    encode_example,
    encode_prompt,
    eos_id,
    pad_id,
    token_lengths,
)
from sft.data.formats import FORMATS, Example, load_examples, read_examples
from sft.data.reading import DataError

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "DataArguments",
    "DataCollator",
    "DataError",
    "EncodedDataset",
    "Example",
    "build_dataset",
    "encode_example",
    "encode_prompt",
    "eos_id",
    "load_examples",
    "main",
    "pad_id",
    "read_examples",
    "token_lengths",
]
