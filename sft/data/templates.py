"""Prompt templates: the chat markup of each model family, named and kept in one place.

A *format* (``sft.data``) says how a row of a user's file is laid out; it turns the row into
neutral :class:`Turn` objects (query, answer, optional alpaca input, whether the answer is
supervised). A *template* (this module) owns everything the model sees around that text:
special tokens such as ``[gMASK]sop``, role markers, round numbers, the cue that opens an
answer. The template's name is saved in every checkpoint, and training, evaluation and
inference all render through :meth:`Template.render`, so they cannot drift apart.

Decision for ChatGLM2's ``chat`` format (``prompt``/``response``/``history``): the format only
reads the rows into turns (history first, then the open turn); the ``chatglm2`` template
renders them as ChatGLM2's rounds ``[Round i]\\n\\n问：q\\n\\n答：r\\n\\n``. ``--format chat
--template chatglm2`` therefore reproduces ChatGLM2's ``build_prompt`` exactly, while the same
file trained with ``--template chatglm3`` gets ChatGLM3's role tokens instead of round text
wrapped in role tokens.

Rendering produces :class:`Segment` objects; the last one is always the final answer. Two
parts of a prompt are marked ``keep``: the template's special-token prefix and the cue that
opens the final answer (``<|assistant|>\\n``, ``\\n\\n答：``). Truncating the prompt drops
tokens from the left but never these, so the model always sees how its answer starts.

**Token ids, not just text.** A template says which of its parts are special tokens
(:class:`Special`: encoded as the token's id, whatever the tokenizer would make of the string)
and which strings the family tokenizes as one. That matters for SentencePiece models with a
dummy prefix (ChatGLM2/3), where every separately encoded string starts with ``▁``. THUDM's
code, which the ids below reproduce exactly (``tests/sft/data/test_templates_thudm.py``):

* ChatGLM2 ``ptuning/main.py``: ``tokenizer.encode(build_prompt(query, history))`` (``[gMASK]
  sop`` + one ``sp.encode`` of the whole prompt text, history answers included), then the answer
  encoded on its own, then eos. The ``chatglm2`` template joins all prompt text into one string.
* ChatGLM3 ``build_single_message`` (``build_chat_input``; the finetune demo's per-message
  layout): ``<|role|>`` id, ``sp.encode("\\n")``, ``sp.encode(content)`` -- "\\n" and the content
  each with their own dummy prefix. The ``chatglm3`` template encodes each part on its own
  (``split_text``). Its prompt is ``build_chat_input``'s followed by ``sp.encode("\\n")``: the
  line break that opens every plain reply, which the model then no longer has to generate.
* GLM-4's chat template (``apply_chat_template``, which its finetune demo calls per message):
  ``<|role|>`` id, then ``"\\n" + content`` encoded as one string (tiktoken: no dummy prefix).
  The final answer is encoded on its own, after ``<|assistant|>`` and ``"\\n"``
  (``build_single_message``'s layout); the two differ only for an answer that starts with a line
  break or with spaces before one.

Layouts (``{query}``, ``{answer}`` are the user's text):

* ``chatglm3``: ``[gMASK]sop<|user|>\\n{query}<|assistant|>\\n{answer}``.
* ``glm4``: ``[gMASK]<sop><|user|>\\n{query}<|assistant|>\\n{answer}``.
* ``chatglm2``: ``[gMASK]sop[Round 1]\\n\\n问：{query}\\n\\n答：{answer}``.
* ``alpaca``: stanford_alpaca's ``PROMPT_DICT`` (``prompt_input`` when the row has an input,
  ``prompt_no_input`` otherwise), followed directly by the answer as in its ``train.py``.
* ``plain``: the query as is, followed directly by the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{query}"
)
_ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{query}\n\n### Input:\n{input}"
)


@dataclass(frozen=True)
class Turn:
    """One exchange of a conversation, before any markup.

    Attributes:
        query: what the user says.
        answer: what the model should say (empty when rendering a prompt for generation).
        supervised: whether the loss covers this answer (the final answer always counts).
        input: alpaca's optional input, rendered by the template next to the query.
    """

    query: str
    answer: str
    supervised: bool = True
    input: str = ""


@dataclass(frozen=True)
class Special:
    """A special token that a template writes: encoded as the token's id, never as text."""

    token: str


Pattern = tuple[str | Special, ...]
"""Parts of a template string: ``str.format`` patterns and :class:`Special` tokens, in order."""


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text and how the encoder treats it.

    Attributes:
        text: the text, or the special token's name when ``special``.
        supervised: whether its tokens are labels (else ``IGNORE_INDEX``).
        keep: whether prompt truncation must leave its tokens in place.
        special: ``text`` is one special token, encoded as its id.
        joined: the text continues the segment before it: both are tokenized as one string
            (``add_special_tokens=False``); otherwise the text is tokenized on its own.
    """

    text: str
    supervised: bool = False
    keep: bool = False
    special: bool = False
    joined: bool = False


@dataclass(frozen=True)
class Template:
    """The chat markup of one model family.

    Each pattern field is a tuple of parts: ``str.format`` patterns and :class:`Special` tokens;
    ``{round}`` is the 1-based turn number.

    Attributes:
        name: registry key, saved in checkpoints.
        prefix: special tokens opening every sequence (kept under truncation).
        system: pattern for a system message (``{content}``).
        user: pattern for a user turn (``{query}``, ``{round}``).
        user_with_input: pattern for a user turn with alpaca's input (adds ``{input}``).
        assistant: the cue opening an answer (kept under truncation for the final answer).
        turn_end: parts after an answer when another turn follows.
        split_text: tokenize every text part on its own, as ChatGLM3's ``build_single_message``
            does; otherwise neighbouring prompt text with the same supervision is one string.
    """

    name: str
    prefix: Pattern = ()
    system: Pattern = ("{content}\n\n",)
    user: Pattern = ("{query}",)
    user_with_input: Pattern = ("{query}\n\n{input}",)
    assistant: Pattern = ()
    turn_end: Pattern = ()
    split_text: bool = False

    def render(self, turns: list[Turn] | tuple[Turn, ...], system: str = "") -> tuple[Segment, ...]:
        """Render a conversation; the last segment is the final turn's answer, always supervised.

        The final answer is always a segment of its own, tokenized on its own.
        """
        if not turns:
            raise ValueError("Template.render: expected at least one turn, found none")
        pieces = _parts(self.prefix, keep=True)
        if system:
            pieces += _parts(self.system, content=system)
        for number, turn in enumerate(turns, start=1):
            last = number == len(turns)
            pattern = self.user_with_input if turn.input else self.user
            pieces += _parts(pattern, query=turn.query, input=turn.input, round=number)
            pieces += _parts(self.assistant, keep=last, round=number)
            if not last:
                pieces.append(Segment(turn.answer, supervised=turn.supervised))
                pieces += _parts(self.turn_end, round=number)
        final = Segment(turns[-1].answer, supervised=True)
        return (*_join(pieces, self.split_text), final)


def _parts(pattern: Pattern, keep: bool = False, **fields) -> list[Segment]:
    return [
        Segment(part.token, keep=keep, special=True) if isinstance(part, Special)
        else Segment(part.format(**fields), keep=keep)
        for part in pattern
    ]


def _join(pieces: list[Segment], split_text: bool) -> list[Segment]:
    """Drop empty text; mark text that continues text with the same supervision as ``joined``
    (unless ``split_text``), and merge such neighbours when their flags are equal too."""
    joined: list[Segment] = []
    for piece in pieces:
        if not piece.text:
            continue
        before = joined[-1] if joined else None
        if piece.special or split_text or before is None or before.special or before.supervised != piece.supervised:
            joined.append(piece)
        elif before.keep == piece.keep:
            joined[-1] = Segment(before.text + piece.text, piece.supervised, piece.keep, joined=before.joined)
        else:
            joined.append(Segment(piece.text, piece.supervised, piece.keep, joined=True))
    return joined


_GMASK, _SOP, _SOP4 = Special("[gMASK]"), Special("sop"), Special("<sop>")
_SYSTEM, _USER, _ASSISTANT = Special("<|system|>"), Special("<|user|>"), Special("<|assistant|>")

TEMPLATES: dict[str, Template] = {
    template.name: template
    for template in (
        Template(
            name="chatglm3",
            prefix=(_GMASK, _SOP),
            system=(_SYSTEM, "\n", "{content}"),
            user=(_USER, "\n", "{query}"),
            user_with_input=(_USER, "\n", "{query}\n\n{input}"),
            assistant=(_ASSISTANT, "\n"),
            split_text=True,
        ),
        Template(
            name="glm4",
            prefix=(_GMASK, _SOP4),
            system=(_SYSTEM, "\n", "{content}"),
            user=(_USER, "\n", "{query}"),
            user_with_input=(_USER, "\n", "{query}\n\n{input}"),
            assistant=(_ASSISTANT, "\n"),
        ),
        Template(
            name="chatglm2",
            prefix=(_GMASK, _SOP),
            user=("[Round {round}]\n\n问：{query}",),
            user_with_input=("[Round {round}]\n\n问：{query}\n\n{input}",),
            assistant=("\n\n答：",),
            turn_end=("\n\n",),
        ),
        Template(
            name="alpaca",
            user=(_ALPACA_NO_INPUT,),
            user_with_input=(_ALPACA_INPUT,),
            assistant=("\n\n### Response:",),
            turn_end=("\n\n",),
        ),
        Template(name="plain", system=("{content}\n",), user_with_input=("{query}\n{input}",), turn_end=("\n",)),
    )
}


def get_template(name: str) -> Template:
    """Return the registered template called ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names.
    """
    if name not in TEMPLATES:
        raise ValueError(f"--template: expected one of {', '.join(TEMPLATES)}, found {name!r}")
    return TEMPLATES[name]
