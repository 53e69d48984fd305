"""The serving engine: one base model, many checkpoints on it, every running request in one batch.

``Engine.load("embedded", {"adgen": DIR, ...})`` loads the base once and each checkpoint onto it
(:mod:`sft.serving.catalog`: a P-tuning prefix becomes precomputed keys/values, a LoRA checkpoint
a peft adapter, a full checkpoint a model of its own). :meth:`Engine.generate` is an async
generator of :class:`Delta` pieces; a background thread (:mod:`sft.serving.scheduler`) decodes
all running requests together, rows of different checkpoints in the same forward
(:mod:`sft.serving.batch`), and lets a new request join between two steps.

The engine knows no HTTP: the server (:mod:`sft.serving.server`) turns OpenAI requests into
:meth:`Engine.chat_prompt` / :meth:`Engine.completion_prompt` ids and :class:`SamplingParams`, and
a :class:`RequestError`'s message into a 400 answer. Prompts are encoded exactly as ``sft.infer``
encodes them for the same checkpoint, and a greedy answer is ``sft.infer``'s, so what a checkpoint
was evaluated with is what it serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from sft.errors import UserError
from sft.serving.catalog import Catalog, Servable, load_catalog
from sft.serving.scheduler import Scheduler

ROLES = ("system", "user", "assistant")


class RequestError(UserError):
    """A request the engine cannot serve (unknown model, prompt too long, bad parameters); ``str()`` is the
    whole message for the client."""


UNCUT = 1 << 30  # a prompt length no request reaches


@dataclass
class SamplingParams:
    """How one request's tokens are chosen; invalid values raise :class:`RequestError` naming each field."""

    max_tokens: int = 256  # new tokens
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # same seed, same text
    stop: tuple[str, ...] = ()  # stop strings: the text is cut before the first one

    def __post_init__(self) -> None:
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        problems = []
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens: expected a positive integer, found {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 100:
            problems.append(f"temperature: expected a number in [0, 100], found {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            problems.append(f"top_p: expected a number in (0, 1], found {self.top_p!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            problems.append(f"seed: expected an integer, found {self.seed!r}")
        if not all(isinstance(stop, str) and stop for stop in self.stop):
            problems.append(f"stop: expected non-empty strings, found {list(self.stop)!r}")
        if problems:
            raise RequestError("; ".join(problems))


@dataclass
class Delta:
    """One streamed piece of an answer."""

    text: str  # new text since the last Delta (may be "")
    finish_reason: str | None  # None while running; "stop" (eos or stop string) or "length" at the end
    prompt_tokens: int
    completion_tokens: int  # tokens generated so far, a final eos included


@dataclass(eq=False)
class Request:
    """One generation as the decode thread sees it; results go to the consumer's event loop."""

    servable: Servable
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # the consumer stopped listening: the decode loop drops the row

    def emit(self, text: str, finish_reason: str | None, completion_tokens: int) -> None:
        self._put(Delta(text, finish_reason, len(self.prompt_ids), completion_tokens))

    def fail(self, error: BaseException) -> None:
        self._put(error)

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening
            self.cancelled = True


class Engine:
    """See the module docstring; build it with :meth:`load`."""

    def __init__(self, catalog: Catalog, max_batch_size: int = 16) -> None:
        if max_batch_size < 1:
            raise UserError(f"--max_batch_size: expected a positive integer, found {max_batch_size}")
        self.catalog = catalog
        self.names: list[str] = list(catalog.servables)
        self._scheduler = Scheduler(max_batch_size)

    @classmethod
    def load(cls, model: str, checkpoints: dict[str, str], dtype: str = "auto", max_batch_size: int = 16) -> Engine:
        """``model``: a model directory or ``embedded``; ``checkpoints``: name -> a ptuning, lora or full
        checkpoint made by ``sft.train``, or a directory written by ``sft.export --prefix_kv``."""
        return cls(load_catalog(model, checkpoints, dtype), max_batch_size)

    def start(self) -> None:
        """Start the decode thread (idempotent; :meth:`generate` starts it too)."""
        self._scheduler.start()

    def close(self) -> None:
        """Stop the decode thread; requests still waiting or running fail with ``EngineClosed`` (idempotent)."""
        self._scheduler.close()

    def servable(self, name: str) -> Servable:
        if name not in self.catalog.servables:
            raise RequestError(f"model: expected one of {', '.join(self.names)}, found {name!r}")
        return self.catalog.servables[name]

    def chat_prompt(self, name: str, messages: list[dict], truncate: bool = True) -> list[int]:
        """``messages`` rendered with the checkpoint's template: system messages first, then user and
        assistant turns, ending with a user's. ``truncate``: cut to its ``max_source_length`` as
        ``sft.infer`` cuts prompts; else whole, and :meth:`check` refuses one that is too long (the server's way)."""
        from sft.data import Example, encode_prompt
        from sft.data.templates import get_template

        servable = self.servable(name)
        system, turns = _turns(messages)
        example = Example(get_template(servable.data.template).render(turns, system=system))
        return encode_prompt(example, servable.group.tokenizer, _source_limit(servable, truncate))

    def completion_prompt(self, name: str, prompt: str, truncate: bool = True) -> list[int]:
        """``prompt`` as the user turn, encoded exactly as ``sft.infer --prompt`` encodes it (``truncate``:
        as :meth:`chat_prompt`)."""
        from sft.eval.inference import prompt_ids

        if not isinstance(prompt, str):
            raise RequestError(f"prompt: expected a string, found {type(prompt).__name__}")
        servable = self.servable(name)
        data = replace(servable.data, max_source_length=_source_limit(servable, truncate))
        return prompt_ids(prompt, servable.group.tokenizer, data)

    def max_prompt_tokens(self, name: str) -> int:
        """The checkpoint's ``max_source_length``: where ``sft.infer`` (and training) cut prompts."""
        return self.servable(name).data.max_source_length

    def check(self, name: str, prompt_ids: list[int], params: SamplingParams) -> Servable:
        """Raise :class:`RequestError` unless the request can run (``generate`` checks the same, lazily)."""
        servable = self.servable(name)
        group = servable.group
        vocab = group.model.get_input_embeddings().num_embeddings
        if not prompt_ids or not all(isinstance(i, int) and 0 <= i < vocab for i in prompt_ids):
            raise RequestError(f"prompt: expected a non-empty list of token ids in [0, {vocab}), found "
                               f"{len(prompt_ids)} ids" + (" with some out of range" if prompt_ids else ""))
        limit = self.max_prompt_tokens(name)
        if len(prompt_ids) > limit:
            raise RequestError(f"prompt: expected at most {limit} tokens for model {name}, found {len(prompt_ids)}")
        room = group.max_positions - len(prompt_ids)
        if params.max_tokens > room:
            raise RequestError(f"max_tokens: expected at most {room} for a prompt of {len(prompt_ids)} tokens (model "
                               f"{name} has {group.max_positions} positions), found {params.max_tokens}")
        return servable

    async def generate(self, name: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """Stream the answer to ``prompt_ids`` as :class:`Delta` pieces; the last has a ``finish_reason``.

        The checks of :meth:`check` raise at the first iteration. If the consumer stops iterating
        (``aclose()``, cancellation: a client that disconnected), the row leaves the batch at the next
        step. An error while decoding this row is raised here and affects no other request.
        """
        servable = self.check(name, prompt_ids, params)
        request = Request(servable, list(prompt_ids), params, asyncio.get_running_loop())
        self.start()
        self._scheduler.submit(request)
        try:
            while True:
                item = await request.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            request.cancelled = True  # a no-op for a finished row
            self._scheduler.wake()


def _turns(messages: list[dict]):
    """``(system text, turns)`` from OpenAI-style messages; a :class:`RequestError` names the bad message."""
    from sft.data.templates import Turn

    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list of {role, content} objects, found none")
    system, turns, query = [], [], None
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        expected = _expected_roles(bool(turns) or query is not None, query is not None)
        if role not in expected or not isinstance(content, str):
            raise RequestError(f"messages[{index}]: expected role {' or '.join(expected)} with string content, "
                               f"found role {role!r} with {type(content).__name__} content")
        if role == "system":
            system.append(content)
        elif role == "user":
            query = content
        else:
            turns.append(Turn(query, content))
            query = None
    if query is None:
        raise RequestError(f"messages[{len(messages) - 1}]: expected the last message to be the user's, found "
                           f"role {messages[-1].get('role')!r}")
    return "\n".join(system), [*turns, Turn(query, "")]


def _expected_roles(started: bool, awaiting_answer: bool) -> tuple[str, ...]:
    if awaiting_answer:
        return ("assistant",)
    return ("user",) if started else ("system", "user")


def _source_limit(servable: Servable, truncate: bool) -> int:
    """Where a prompt is cut: the checkpoint's ``max_source_length``, or nowhere."""
    return servable.data.max_source_length if truncate else UNCUT
