"""One request's answer as text, streamed: never emit what a later token or a stop string takes back.

The finished answer is what :func:`sft.eval.generation.generate_answers` returns for the same tokens
(``sft.infer``'s answer): the new ids up to the first eos, decoded without special tokens, with
leading and trailing whitespace stripped; a stop string cuts it before its first occurrence (and
the cut answer is stripped again). Streaming must add up to exactly that, so while a row runs
:meth:`TextStream.push` holds back

* leading whitespace (stripped at the end if nothing follows), and trailing whitespace;
* a trailing U+FFFD, the decoder's stand-in for a character whose bytes have not all arrived;
* the longest tail that is the start of some stop string (``"\\n\\nU"`` for stop ``"\\n\\nUser:"``).

The whole new text is decoded again at every token rather than token by token: a SentencePiece
decoder changes a piece's leading space by what precedes it, and the answers served here are a
few hundred tokens, so the quadratic cost is small next to a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TextStream:
    """The text of one row as tokens arrive; ``emitted`` is what was streamed so far."""

    decode: object  # callable: list[int] -> str (special tokens skipped)
    stop: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    emitted: str = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Add one generated (non-eos) token; return the new safe text and whether a stop string appeared."""
        self.ids.append(token)
        text = self.decode(self.ids)
        cut = self._stop_position(text)
        if cut is not None:
            return "", True
        return self._advance(_safe_prefix(text.lstrip(), self.stop)), False

    def finish(self) -> str:
        """The rest of the final answer (see the module docstring); ``emitted`` then is the whole answer."""
        text = self.decode(self.ids)
        cut = self._stop_position(text)
        final = (text if cut is None else text[:cut]).strip()
        return self._advance(final)

    def _stop_position(self, text: str) -> int | None:
        found = [position for position in (text.find(stop) for stop in self.stop) if position >= 0]
        return min(found) if found else None

    def _advance(self, text: str) -> str:
        assert text.startswith(self.emitted), (self.emitted, text)  # decoding never rewrites held-back text
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta


def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """``text`` without the tail that may still change or be cut (see the module docstring)."""
    while True:
        trimmed = text.rstrip().rstrip("\ufffd").rstrip()
        hold = max((size for stop in stops for size in range(1, min(len(stop), len(trimmed) + 1))
                    if trimmed.endswith(stop[:size])), default=0)
        trimmed = trimmed[: len(trimmed) - hold]
        if trimmed == text:
            return text
        text = trimmed
