"""Checkpoints on the embedded model, trained in process for a few steps, and a live server over them.

The server tests talk to a real uvicorn on a free port of 127.0.0.1, run in a thread of the test
process, over a real :class:`sft.serving.engine.Engine` (the embedded base, one P-tuning and one
LoRA checkpoint): what a client sees is what ``python -m sft.serve`` would answer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sft.training import recipe
from tests.conftest import REPO

DATA = REPO / "data" / "adgen"


def train_embedded(output_dir: Path, method: str, *extra: str) -> Path:
    """A few steps of ``sft.train`` on the embedded model: enough to make its answers differ from the base's."""
    recipe.run(recipe.parse_args([
        "--model_name_or_path", "embedded", "--finetuning_type", method,
        "--train_file", str(DATA / "train.json"), "--max_train_samples", "32",
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "8", "--max_steps", "4",
        "--max_source_length", "64", "--max_target_length", "64", "--logging_steps", "2",
        "--save_strategy", "no", "--report_to", "none", "--seed", "3", *extra,
    ]))
    return output_dir


@pytest.fixture(scope="session")
def served_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``{"adgen-pt": P-tuning checkpoint, "adgen-lora": LoRA checkpoint}`` on the embedded model."""
    root = tmp_path_factory.mktemp("served")
    return {
        "adgen-pt": train_embedded(root / "pt", "ptuning", "--pre_seq_len", "16", "--learning_rate", "0.3"),
        "adgen-lora": train_embedded(root / "lora", "lora", "--learning_rate", "0.01"),
    }


@pytest.fixture(scope="session")
def engine(served_checkpoints):
    """The embedded base (``base``) and both checkpoints, started; closed at the end of the session."""
    from sft.serving.engine import Engine

    engine = Engine.load("embedded", {name: str(path) for name, path in served_checkpoints.items()})
    engine.start()
    yield engine
    engine.close()


@dataclass
class Server:
    """A running server: its base URL and API key (``None``: no key asked)."""

    url: str
    api_key: str | None
    app: object

    @property
    def api(self) -> str:
        return f"{self.url}/v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def start_server() -> Iterator[Callable[..., Server]]:
    """``start_server(engine, api_key=None)``: uvicorn in a thread on a free port; every server stops at the end."""
    import uvicorn

    from sft.serving.server import create_app

    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(engine, api_key: str | None = None) -> Server:
        app = create_app(engine, api_key=api_key)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        running.append((server, thread))
        return Server(f"http://127.0.0.1:{port}", api_key, app)

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def server(engine, start_server) -> Server:
    """The shared server over ``engine``, no API key."""
    return start_server(engine)
