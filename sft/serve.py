"""Serve a base model and its tuned checkpoints over an OpenAI-compatible API: ``python -m sft.serve``.

::

    python -m sft.serve --model embedded --checkpoint adgen=output/adgen-ptuning --checkpoint lora=output/lora

One base model is loaded once; every ``--checkpoint NAME=DIR`` (P-tuning prefix or LoRA adapter
on that base) becomes one more ``model`` a request can name, next to the base's own name
(``GET /v1/models`` lists them). The same server answers ``POST /v1/chat/completions`` and
``POST /v1/completions`` (what :mod:`sft.serving.server` documents) and a web page at ``/``.

It listens on 127.0.0.1 unless ``--host`` says otherwise: a server that answers anyone on the
network is a choice to make out loud, and then ``--api_key`` (or ``SFT_API_KEY``, which keeps the
key out of the process list) makes every API request carry ``Authorization: Bearer <key>``.

FastAPI, uvicorn and torch are imported only once the flags are read, so ``--help`` is fast.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from sft.cli import run_command
from sft.models import EMBEDDED, check_dtype

logger = logging.getLogger(__name__)

API_KEY_ENV = "SFT_API_KEY"


@dataclass
class ServeArguments:
    """What to serve and where."""

    model: str = field(
        default=EMBEDDED, metadata={"help": "Base model: a transformers model directory, or 'embedded'."}
    )
    checkpoint: list[str] = field(
        default_factory=list,
        metadata={"help": "NAME=DIR: a P-tuning or LoRA checkpoint on --model, served as model NAME. Repeatable "
                          "(--checkpoint a=DIR --checkpoint b=DIR) or several after one flag.",
                  "action": "extend"},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on."})
    api_key: str | None = field(
        default=None,
        metadata={"help": f"Require 'Authorization: Bearer <key>' on the API (default: ${API_KEY_ENV} if set, "
                          "else no key)."},
    )
    dtype: str = field(default="auto", metadata={"help": "Base weights dtype: auto|float32|bfloat16|float16."})
    max_batch_size: int = field(
        default=16, metadata={"help": "Most sequences decoded together; further requests wait for a free slot."}
    )

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        self.api_key = self.api_key or os.environ.get(API_KEY_ENV) or None
        problems = [f"--checkpoint {item!r}: expected NAME=DIR" for item in self.checkpoint
                    if not _split(item)[0] or not _split(item)[1]]
        names = [_split(item)[0] for item in self.checkpoint]
        problems += [f"--checkpoint: expected distinct names, found {name!r} {names.count(name)} times"
                     for name in sorted(set(names)) if names.count(name) > 1]
        if not 0 < self.port < 65536:
            problems.append(f"--port: expected 1 to 65535, found {self.port}")
        if self.max_batch_size < 1:
            problems.append(f"--max_batch_size: expected at least 1, found {self.max_batch_size}")
        if problems:
            raise ValueError("; ".join(problems))

    def checkpoints(self) -> dict[str, str]:
        """``{name: directory}`` in the order given."""
        return dict(_split(item) for item in self.checkpoint)


def _split(item: str) -> tuple[str, str]:
    name, _, directory = item.partition("=")
    return name.strip(), directory.strip()


def parse_args(argv: list[str] | None = None) -> ServeArguments:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(ServeArguments).parse_args_into_dataclasses(args=argv)
    return args


def serve(args: ServeArguments) -> None:
    """Load the engine, then answer requests until interrupted (Ctrl-C); the engine is closed either way."""
    import uvicorn

    from sft.serving.engine import Engine
    from sft.serving.server import create_app

    engine = Engine.load(args.model, args.checkpoints(), dtype=args.dtype, max_batch_size=args.max_batch_size)
    engine.start()
    try:
        app = create_app(engine, api_key=args.api_key)
        logger.info("serving %s on http://%s:%d/ (API key %s)", ", ".join(engine.names), args.host, args.port,
                    "required" if args.api_key else "not required")
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: parse_args(argv), serve)


if __name__ == "__main__":
    sys.exit(main())
