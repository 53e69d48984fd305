"""Serving many checkpoints of one base model with continuous batching (``python -m sft.serve``).

:mod:`sft.serving.engine` is the engine (no HTTP): :class:`Engine`, :class:`SamplingParams`,
:class:`Delta`, :class:`RequestError`. The modules under it: :mod:`~sft.serving.catalog` (what is
loaded), :mod:`~sft.serving.batch` (one batch and its KV cache), :mod:`~sft.serving.scheduler`
(the decode thread), :mod:`~sft.serving.text` (streamed text and stop strings).
"""

from sft.serving.engine import Delta, Engine, RequestError, SamplingParams

__all__ = ["Delta", "Engine", "RequestError", "SamplingParams"]
