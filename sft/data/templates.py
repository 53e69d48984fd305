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
segments of a prompt are marked ``keep``: the template's special-token prefix and the cue that
opens the final answer (``<|assistant|>\\n``, ``\\n\\n答：``). Truncating the prompt drops
tokens from the left but never these, so the model always sees how its answer starts.

Layouts (``{query}``, ``{answer}`` are the user's text):

* ``chatglm3``: ``[gMASK]sop<|user|>\\n{query}<|assistant|>\\n{answer}``, as ChatGLM3's
  ``build_single_message`` (role token, then ``"\\n"``, then content).
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
class Segment:
    """A piece of rendered text and how the encoder treats it.

    Attributes:
        text: the text, tokenized on its own (``add_special_tokens=False``).
        supervised: whether its tokens are labels (else ``IGNORE_INDEX``).
        keep: whether prompt truncation must leave its tokens in place.
    """

    text: str
    supervised: bool = False
    keep: bool = False


@dataclass(frozen=True)
class Template:
    """The chat markup of one model family.

    Each string field is a ``str.format`` pattern; ``{round}`` is the 1-based turn number.

    Attributes:
        name: registry key, saved in checkpoints.
        prefix: special tokens opening every sequence (kept under truncation).
        system: pattern for a system message (``{content}``).
        user: pattern for a user turn (``{query}``, ``{round}``).
        user_with_input: pattern for a user turn with alpaca's input (adds ``{input}``).
        assistant: the cue opening an answer (kept under truncation for the final answer).
        turn_end: text after an answer when another turn follows.
    """

    name: str
    prefix: str = ""
    system: str = "{content}\n\n"
    user: str = "{query}"
    user_with_input: str = "{query}\n\n{input}"
    assistant: str = ""
    turn_end: str = ""

    def render(self, turns: list[Turn] | tuple[Turn, ...], system: str = "") -> tuple[Segment, ...]:
        """Render a conversation; the last segment is the final turn's answer, always supervised.

        Adjacent prompt segments with the same flags are joined so the tokenizer sees the
        longest text it can; the final answer always stays a segment of its own.
        """
        if not turns:
            raise ValueError("Template.render: expected at least one turn, found none")
        pieces = [Segment(self.prefix, keep=True)]
        if system:
            pieces.append(Segment(self.system.format(content=system)))
        for number, turn in enumerate(turns, start=1):
            last = number == len(turns)
            pattern = self.user_with_input if turn.input else self.user
            pieces.append(Segment(pattern.format(query=turn.query, input=turn.input, round=number)))
            pieces.append(Segment(self.assistant.format(round=number), keep=last))
            if not last:
                pieces.append(Segment(turn.answer, supervised=turn.supervised))
                pieces.append(Segment(self.turn_end.format(round=number)))
        final = Segment(turns[-1].answer, supervised=True)
        return (*_join_adjacent(pieces), final)


def _join_adjacent(pieces: list[Segment]) -> list[Segment]:
    """Drop empty segments and join neighbours whose flags are equal."""
    joined: list[Segment] = []
    for piece in pieces:
        if not piece.text:
            continue
        if joined and (joined[-1].supervised, joined[-1].keep) == (piece.supervised, piece.keep):
            joined[-1] = Segment(joined[-1].text + piece.text, piece.supervised, piece.keep)
        else:
            joined.append(piece)
    return joined


TEMPLATES: dict[str, Template] = {
    template.name: template
    for template in (
        Template(
            name="chatglm3",
            prefix="[gMASK]sop",
            system="<|system|>\n{content}",
            user="<|user|>\n{query}",
            user_with_input="<|user|>\n{query}\n\n{input}",
            assistant="<|assistant|>\n",
        ),
        Template(
            name="glm4",
            prefix="[gMASK]<sop>",
            system="<|system|>\n{content}",
            user="<|user|>\n{query}",
            user_with_input="<|user|>\n{query}\n\n{input}",
            assistant="<|assistant|>\n",
        ),
        Template(
            name="chatglm2",
            prefix="[gMASK]sop",
            user="[Round {round}]\n\n问：{query}",
            user_with_input="[Round {round}]\n\n问：{query}\n\n{input}",
            assistant="\n\n答：",
            turn_end="\n\n",
        ),
        Template(
            name="alpaca",
            user=_ALPACA_NO_INPUT,
            user_with_input=_ALPACA_INPUT,
            assistant="\n\n### Response:",
            turn_end="\n\n",
        ),
        Template(name="plain", system="{content}\n", user_with_input="{query}\n{input}", turn_end="\n"),
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
