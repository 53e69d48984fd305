"""The decode loop: one background thread that admits requests, prefills them and steps every batch.

Each turn of the loop (see :mod:`sft.serving.batch` for the batch itself):

1. admit waiting requests while fewer than ``max_batch_size`` rows run (cancelled ones are dropped);
2. prefill the newcomers of each model group in one forward; each gets its first token at once
   and then joins its group's running batch (continuous batching: nobody waits for others to end);
3. step every running batch once; finished and cancelled rows leave, freeing their slots.

The thread sleeps on a condition variable while nothing runs or waits; :meth:`Scheduler.submit`
and cancellations wake it. Requests talk to it only through ``request.emit/fail/cancelled``
(:class:`sft.serving.engine.Request`), which hand results to the consumer's event loop.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING

import torch

from sft.serving.batch import DecodeBatch, Row, sample_row
from sft.serving.catalog import ModelGroup

if TYPE_CHECKING:
    from sft.serving.engine import Request

logger = logging.getLogger(__name__)


class EngineClosed(RuntimeError):
    """The engine was closed while a request waited or ran."""


class Scheduler:
    """Owns the running batches; everything but :meth:`submit`, :meth:`wake` and :meth:`close` runs on its thread."""

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.waiting: deque[Request] = deque()
        self.batches: dict[ModelGroup, DecodeBatch] = {}
        self.condition = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closing = False

    def start(self) -> None:
        with self.condition:
            if self.thread is not None or self.closing:
                return
            self.thread = threading.Thread(target=self._run, name="sft-serve-decode", daemon=True)
            self.thread.start()

    def submit(self, request: Request) -> None:
        with self.condition:
            if self.closing:
                raise EngineClosed("the engine is closed")
            self.waiting.append(request)
            self.condition.notify()

    def wake(self) -> None:
        with self.condition:
            self.condition.notify()

    def close(self) -> None:
        with self.condition:
            self.closing = True
            self.condition.notify()
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._fail_everything(EngineClosed("the engine was closed before the answer was complete"))

    def running(self) -> int:
        return sum(len(batch) for batch in self.batches.values())

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.condition:
                while not self.closing and not self.waiting and not self.running():
                    self.condition.wait()
                if self.closing:
                    return
                newcomers = self._admit()
            try:
                for group, rows in newcomers.items():
                    self._prefill(group, rows)
                for batch in self.batches.values():
                    self._step(batch)
            except Exception as err:  # a bug of ours: fail what ran, keep serving what comes next
                logger.exception("the decode loop failed; failing %d running requests", self.running())
                self._fail_running(err, [row for rows in newcomers.values() for row in rows])

    def _admit(self) -> dict[ModelGroup, list[Row]]:
        """Waiting requests that fit, as new rows by model group (called holding the condition)."""
        newcomers: dict[ModelGroup, list[Row]] = {}
        free = self.max_batch_size - self.running()
        while self.waiting and free > 0:
            request = self.waiting.popleft()
            if request.cancelled:
                continue
            newcomers.setdefault(request.servable.group, []).append(Row.start(request))
            free -= 1
        return newcomers

    def _prefill(self, group: ModelGroup, rows: list[Row]) -> None:
        """Prefill ``rows`` together; if that fails, one at a time, so that only a row failing alone fails."""
        try:
            batch, logits = DecodeBatch.prefill(group, rows)
        except Exception as err:
            if len(rows) > 1:
                for row in rows:
                    self._prefill(group, [row])
                return
            logger.exception("prefill failed for a request of %s", rows[0].servable.name)
            rows[0].fail(err)
            return
        self._advance(batch, logits)
        self.batches.setdefault(group, DecodeBatch(group)).merge(batch)

    def _step(self, batch: DecodeBatch) -> None:
        batch.drop_finished()  # cancelled while the others stepped
        if not batch.rows:
            return
        try:
            logits = batch.step()
        except Exception as err:
            logger.exception("decoding step failed for %d rows", len(batch))
            for row in batch.rows:
                row.fail(err)
            batch.drop_finished()
            return
        self._advance(batch, logits)

    @staticmethod
    def _advance(batch: DecodeBatch, logits: torch.Tensor) -> None:
        """Give each row its next token; a row whose sampling or emission fails fails alone."""
        greedy = logits.argmax(dim=-1).tolist()
        for index, row in enumerate(batch.rows):
            try:
                row.advance(sample_row(logits[index], greedy[index], row))
            except Exception as err:
                logger.exception("request for %s failed", row.servable.name)
                row.fail(err)
        batch.drop_finished()

    def _fail_everything(self, error: BaseException) -> None:
        with self.condition:
            waiting, self.waiting = list(self.waiting), deque()
        for request in waiting:
            request.fail(error)
        self._fail_running(error)

    def _fail_running(self, error: BaseException, newcomers: list[Row] = ()) -> None:
        for row in [*newcomers, *(row for batch in self.batches.values() for row in batch.rows)]:
            if not row.done:
                row.fail(error)
        self.batches.clear()
