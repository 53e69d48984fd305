"""The HTTP side of ``python -m sft.serve``: OpenAI's API over an :class:`~sft.serving.engine.Engine`, and a page.

Routes (``create_app``):

* ``GET /v1/models``, ``GET /v1/models/{name}``: the base first, then each checkpoint.
* ``POST /v1/chat/completions``, ``POST /v1/completions``: ``model`` names what answers; ``n``
  choices, each an engine generation (seeds ``seed``, ``seed + 1``, ...); with ``stream`` the answer
  comes as server-sent events in OpenAI's chunk format, ending in ``data: [DONE]``; the chunk that
  ends the last choice carries ``usage`` (and with ``stream_options.include_usage`` a last chunk
  with no choices carries it too, as OpenAI sends it).
* ``GET /``: the page (``static/``), which calls the same API with ``fetch``.

How a request fails is the design's centre: a server that many people share must answer each
mistake with OpenAI's error object and a 4xx, and keep serving. So bodies are read and validated
here (:mod:`sft.serving.protocol`) rather than by FastAPI, which would answer malformed JSON and
type errors in its own 422 shape and read the body before the API key is checked; the key is
checked first (401), the model name next (404), then the body (400), then the prompt's length
(400, ``context_length_exceeded``), all before a slot is taken. Whatever else goes wrong inside
one request is a 500 for that request alone (or, once its stream has begun, an ``error`` event
that ends it).

Each choice runs in its own task, which owns the engine's generator and closes it however the task
ends. A client that goes away cancels its response; the response cancels its tasks, and closing
the generators frees the engine's slots at once, not when the answer would have been finished.
A non-streamed answer has no response to cancel until it is complete, so while it is collected the
connection is watched (every ``DISCONNECT_POLL_S``), and a client gone away ends the collection.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from sft.serving.engine import Delta, Engine, RequestError, SamplingParams
from sft.serving.protocol import APIError, ChatRequest, CompletionRequest, SamplingRequest, validation_error

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
OWNER = "glm-sft"
Body = TypeVar("Body", bound=BaseModel)


def create_app(engine: Engine, api_key: str | None = None) -> FastAPI:
    """The server's app over a loaded, started ``engine``; the caller starts and closes the engine.

    ``api_key``: if given, every ``/v1`` request must carry ``Authorization: Bearer <api_key>``.
    """
    app = FastAPI(title="glm-sft", docs_url=None, redoc_url=None)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(_api(engine, api_key))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route("/", lambda: FileResponse(STATIC / "index.html"), methods=["GET"], include_in_schema=False)
    return app


def _api(engine: Engine, api_key: str | None) -> APIRouter:
    router = APIRouter(prefix="/v1")
    created = int(time.time())

    @router.get("/models")
    @_guarded
    async def models(request: Request) -> dict:
        _check_key(request, api_key)
        return {"object": "list", "data": [_model_card(name, created) for name in engine.names]}

    @router.get("/models/{name:path}")
    @_guarded
    async def model(name: str, request: Request) -> dict:
        _check_key(request, api_key)
        return _model_card(_servable(engine, name, param=None), created)

    async def complete(request: Request, body_type: type, kind, prompts_of: Callable) -> object:
        """What both endpoints do: key, body, model, the body's prompts (``prompts_of(body, name)``), answer."""
        _check_key(request, api_key)
        body = await _read(request, body_type)
        name = _servable(engine, body.model)
        return await _answer(request, engine, kind, name, prompts_of(body, name), body)

    def chat_prompts(body: ChatRequest, name: str) -> list[list[int]]:
        messages = [message.for_engine() for message in body.messages]
        return [_encode(engine, name, "messages", lambda cut: engine.chat_prompt(name, messages, truncate=cut))]

    def completion_prompts(body: CompletionRequest, name: str) -> list[list[int]]:
        return [_encode(engine, name, "prompt", lambda cut, text=text: engine.completion_prompt(name, text, truncate=cut))
                for text in body.prompts()]

    @router.post("/chat/completions")
    @_guarded
    async def chat_completions(request: Request):
        return await complete(request, ChatRequest, CHAT, chat_prompts)

    @router.post("/completions")
    @_guarded
    async def completions(request: Request):
        return await complete(request, CompletionRequest, COMPLETION, completion_prompts)

    return router


def _guarded(endpoint: Callable) -> Callable:
    """Any other exception of ``endpoint`` becomes our 500 here, before Starlette's last-resort handler, which
    re-raises it into uvicorn, and uvicorn then drops the connection that a client may be about to reuse."""

    @functools.wraps(endpoint)
    async def guarded(*args, **kwargs):
        try:
            return await endpoint(*args, **kwargs)
        except (APIError, HTTPException):
            raise
        except Exception as err:
            logger.exception("%s failed", endpoint.__name__)
            raise _internal(err) from err

    return guarded


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}


def _check_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
        found = "no Authorization header" if "authorization" not in request.headers else "another key"
        raise APIError(401, f"Incorrect API key: expected the header 'Authorization: Bearer <key>' with the "
                            f"server's key, found {found}", code="invalid_api_key")


async def _read(request: Request, model: type[Body]) -> Body:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as err:
        raise validation_error(err.errors(include_url=False)) from None


def _servable(engine: Engine, name: str, param: str | None = "model") -> str:
    if name not in engine.names:
        raise APIError(404, f"The model {name!r} does not exist: expected one of {', '.join(engine.names)}",
                       param=param, code="model_not_found")
    return name


def _encode(engine: Engine, name: str, param: str, encode: Callable[[bool], list[int]]) -> list[int]:
    """The prompt's ids as ``sft.infer`` gives them (``encode(True)``: cut from the left to the checkpoint's
    ``max_source_length``, as it was trained), refused (400) when the whole prompt (``encode(False)``) is
    longer than the model's positions: no cut would make that the user's question any more."""
    try:
        whole = encode(False)
        limit = engine.servable(name).group.max_positions
        if len(whole) > limit:
            raise APIError(400, f"{param}: expected at most {limit} prompt tokens (the positions of model {name!r}), "
                           f"found {len(whole)}", param=param, code="context_length_exceeded")
        return encode(True)
    except RequestError as err:
        raise _request_error(err, param) from None


def _request_error(err: RequestError, param: str | None = None) -> APIError:
    """The engine's refusal as a 400; its messages start with the field they are about (``max_tokens: ...``)."""
    field = re.match(r"([a-z_]+)(\[\d+\])?: ", str(err))
    return APIError(400, str(err), param=field.group(1) if field else param, code="invalid_request")


def _sampling(body: ChatRequest | CompletionRequest) -> list[SamplingParams]:
    """One ``SamplingParams`` per choice; unset fields keep OpenAI's defaults (temperature and top_p 1)."""
    base = SamplingParams()
    settings = {"temperature": body.temperature, "top_p": body.top_p, "max_tokens": body.token_limit()}
    settings = {key: value for key, value in settings.items() if value is not None}
    seeds = [None if body.seed is None else body.seed + i for i in range(body.n or 1)]
    try:
        return [SamplingParams(**{**vars(base), **settings, "seed": seed, "stop": body.stops()}) for seed in seeds]
    except RequestError as err:
        raise _request_error(err) from None


class Choices:
    """Several generations run as tasks; iterating gives ``(choice index, Delta)`` as they arrive.

    A task owns its engine generator (closed however the task ends); :meth:`close` cancels them all,
    which is how an abandoned request gives its slots back.
    """

    def __init__(self, streams: list[AsyncIterator[Delta]]) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._running = len(streams)
        self._tasks = [asyncio.create_task(self._pump(index, stream)) for index, stream in enumerate(streams)]

    async def _pump(self, index: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async with aclosing(stream):
                async for delta in stream:
                    self._queue.put_nowait((index, delta))
        except Exception as err:  # handed to the reader; cancellation (not an Exception) just ends the task
            self._queue.put_nowait((index, err))
        finally:
            self._queue.put_nowait((index, None))

    def __aiter__(self) -> Choices:
        return self

    async def __anext__(self) -> tuple[int, Delta]:
        while self._running:
            index, item = await self._queue.get()
            if item is None:
                self._running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                return index, item
        raise StopAsyncIteration

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


@dataclass(frozen=True)
class Api:
    """What differs between the chat and the completion endpoints: names and where the text goes."""

    id_prefix: str
    object: str
    chunk_object: str
    choice: Callable[[int, str, str | None], dict]
    chunk_choice: Callable[[int, dict | str, str | None], dict]


CHAT = Api(
    "chatcmpl", "chat.completion", "chat.completion.chunk",
    lambda i, text, finish: {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": finish},
    lambda i, delta, finish: {"index": i, "delta": {"content": delta} if isinstance(delta, str) else delta,
                              "logprobs": None, "finish_reason": finish},
)
COMPLETION = Api(
    "cmpl", "text_completion", "text_completion",
    lambda i, text, finish: {"index": i, "text": text, "logprobs": None, "finish_reason": finish},
    lambda i, delta, finish: {"index": i, "text": delta if isinstance(delta, str) else "", "logprobs": None,
                              "finish_reason": finish},
)


class Usage:
    """Token counts of a request: each prompt once (OpenAI's way with ``n``), every choice's answer."""

    def __init__(self, choices: int, n: int) -> None:
        self.last: list[Delta | None] = [None] * choices
        self.n = n

    def add(self, index: int, delta: Delta) -> None:
        self.last[index] = delta

    def body(self) -> dict:
        done = [delta for delta in self.last if delta is not None]
        prompt = sum(delta.prompt_tokens for i, delta in enumerate(self.last) if delta is not None and i % self.n == 0)
        completion = sum(delta.completion_tokens for delta in done)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


DISCONNECT_POLL_S = 0.1


async def _answer(request: Request, engine: Engine, api: Api, name: str, prompts: list[list[int]],
                  body: ChatRequest | CompletionRequest):
    """Start every choice, wait for the first delta (so a refusal is still a status code), then answer."""
    params = _sampling(body)
    choices = Choices([engine.generate(name, ids, p) for ids in prompts for p in params])
    try:
        first = await anext(choices)
    except RequestError as err:
        choices.close()
        raise _request_error(err) from None
    except BaseException:
        choices.close()
        raise
    head = {"id": f"{api.id_prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": name}
    usage = Usage(len(prompts) * len(params), len(params))
    if body.stream:
        events = _events(api, head, first, choices, usage, body)
        return EventStream(events, media_type="text/event-stream",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    collect = asyncio.ensure_future(_collect(api, head, first, choices, usage))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        if collect.done():
            return collect.result()
        logger.info("%s: the client left before its answer was complete; its generation stopped", name)
        return JSONResponse({}, status_code=499)  # nobody reads it; nginx's code for a closed request
    finally:
        for task in (collect, gone):
            task.cancel()
        choices.close()


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


async def _collect(api: Api, head: dict, first: tuple[int, Delta], choices: Choices, usage: Usage) -> dict:
    texts, finishes = [""] * len(usage.last), [None] * len(usage.last)
    item = first
    while item is not None:
        index, delta = item
        usage.add(index, delta)
        texts[index] += delta.text
        finishes[index] = delta.finish_reason or finishes[index]
        item = await anext(choices, None)
    return {**head, "object": api.object, "choices": [api.choice(i, t, f) for i, (t, f) in enumerate(zip(texts, finishes))],
            "usage": usage.body()}


async def _events(api: Api, head: dict, first: tuple[int, Delta], choices: Choices, usage: Usage,
                  body: SamplingRequest) -> AsyncIterator[str]:
    """Server-sent events: a role chunk per chat choice, text chunks, finish chunks, ``[DONE]``."""

    def chunk(choice_list: list[dict], **extra) -> str:
        return _event({**head, "object": api.chunk_object, "choices": choice_list, **extra})

    try:
        if api is CHAT:
            for index in range(len(usage.last)):
                yield chunk([api.chunk_choice(index, {"role": "assistant", "content": ""}, None)])
        finished, item = 0, first
        while item is not None:
            index, delta = item
            usage.add(index, delta)
            if delta.text:
                yield chunk([api.chunk_choice(index, delta.text, None)])
            if delta.finish_reason:
                finished += 1
                last = finished == len(usage.last)
                yield chunk([api.chunk_choice(index, {}, delta.finish_reason)],
                            **({"usage": usage.body()} if last else {}))
            item = await anext(choices, None)
        if body.stream_options is not None and body.stream_options.include_usage:
            yield chunk([], usage=usage.body())
        yield "data: [DONE]\n\n"
    except Exception as err:  # the status line is sent: the stream's last event says what failed
        if not isinstance(err, RequestError):
            logger.error("request %s failed while streaming", head["id"], exc_info=err)
        failure = _request_error(err) if isinstance(err, RequestError) else _internal(err)
        yield _event(failure.body())
    finally:
        choices.close()


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """A streaming response that always closes its event generator, however the response ends.

    Starlette cancels a response whose client disconnected; if that happens while the generator is
    suspended at a ``yield`` it would only be closed when garbage-collected. Closing it here runs its
    ``finally`` (which cancels the choices' tasks) at once.
    """

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def _internal(err: BaseException) -> APIError:
    return APIError(500, f"The server had an error while processing your request ({type(err).__name__}: {err})",
                    type="server_error", code="internal_error")


async def _api_error(request: Request, err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
    message = f"{request.method} {request.url.path}: {err.detail}"
    return JSONResponse(APIError(err.status_code, message, code=code).body(), status_code=err.status_code)


async def _internal_error(request: Request, err: Exception) -> JSONResponse:
    # Starlette re-raises ``err`` after this answer is sent, so uvicorn logs its traceback.
    return JSONResponse(_internal(err).body(), status_code=500)
