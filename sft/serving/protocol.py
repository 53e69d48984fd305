"""The OpenAI request bodies the server accepts and the error shape it answers with.

Requests are validated strictly, as OpenAI's API does: a string where a number belongs is an
error, not something coerced; an argument we do not know is refused ("Unrecognized request
argument supplied: best_of") rather than silently ignored, so a client never believes a
setting took effect when it did not. Every failure, ours or pydantic's, leaves the server as
``{"error": {"message", "type", "param", "code"}}`` (:class:`APIError`) and messages say where
(the field), what was expected and what was found.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_N = 16  # choices per request: each one is a sequence in the engine's batch


class APIError(Exception):
    """A request that fails: its HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _found(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _strings(expected: str, max_items: int | None = None):
    """A before-validator for "a string, or a list of strings": one clear message instead of one per union arm."""

    def check(value: Any) -> Any:
        items = value if isinstance(value, list) else [value]
        if value is None or (items and all(isinstance(item, str) for item in items)
                             and (max_items is None or len(items) <= max_items)):
            return value
        raise ValueError(f"expected {expected}, found {_found(value)}")

    return BeforeValidator(check)


Stop = Annotated[str | list[str] | None, _strings(f"a string or a list of up to {MAX_STOP} strings", MAX_STOP)]
Prompt = Annotated[str | list[str], _strings("a string or a non-empty list of strings")]


def _content(value: Any) -> Any:
    """OpenAI's content parts ``[{"type": "text", "text": ...}]`` joined into one string; text parts only."""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(part["text"] for part in value)
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string or a list of text parts, found {_found(value)}")


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """What both endpoints share: which model, how to sample, how to answer."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: Stop = None
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None  # OpenAI's end-user tag: accepted, not used

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, BeforeValidator(_content)]
    name: str | None = None  # OpenAI's participant name: accepted, not used

    def for_engine(self) -> dict:
        """``{role, content}``; OpenAI's ``developer`` role is its newer name for ``system``."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content}


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: Prompt

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    def token_limit(self) -> int | None:
        return self.max_tokens


def validation_error(errors: list[dict]) -> APIError:
    """Pydantic's (or FastAPI's) errors as one 400: every problem in the message, the first one's field as param."""
    if any(error["type"] == "json_invalid" for error in errors):
        detail = next(e for e in errors if e["type"] == "json_invalid").get("ctx", {}).get("error", "")
        return APIError(400, f"We could not parse the JSON body of your request ({detail}): expected a JSON object",
                        code="invalid_json")
    problems = [_problem(error) for error in errors]
    param = _where(errors[0]["loc"]) or None
    return APIError(400, "; ".join(problems), param=param, code="invalid_request")


def _where(loc: tuple) -> str:
    # FastAPI puts "body" first; list indexes are written messages[0], as OpenAI's messages do.
    parts = [part for part in loc if part != "body" and not (isinstance(part, str) and part.startswith("function-"))]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problem(error: dict) -> str:
    where = _where(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"Unrecognized request argument supplied: {where}"
    if error["type"] == "missing":
        return f"{where}: expected a value, found none"
    ctx, found = error.get("ctx", {}), _found(error.get("input"))
    bounds = {"greater_than_equal": "at least {ge}", "greater_than": "more than {gt}", "less_than_equal": "at most {le}",
              "less_than": "less than {lt}", "too_short": "at least {min_length} item(s)",
              "too_long": "at most {max_length} item(s)"}
    if error["type"] in bounds:
        message = f"expected {bounds[error['type']].format(**ctx)}, found {found}"
    else:
        message = error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
        message = message if message.startswith("expected") else f"expected {message}, found {found}"
    return f"{where or 'request body'}: {message}"
