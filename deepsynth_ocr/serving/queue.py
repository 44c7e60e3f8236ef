"""Dynamic batching: requests that arrive close together share one batched generation.

One worker task takes the oldest waiting image and waits up to ``max_wait_ms`` (from that image's
arrival) for others for the same model to join, until ``max_batch_size`` are there; the batch then
runs in one background thread while new requests keep queueing, so under load the next batch is
already full when the previous one ends. Images for another model wait their turn in arrival order.

A request gives up its images when it times out or its client goes away: their futures are
cancelled and the worker skips them; a batch already running finishes and its result is dropped.
The queue is bounded: a request that does not fit gets ``QueueFull`` (the app answers 503 with
``Retry-After``). ``close()`` lets everything queued finish, then stops the worker.

With a tracer (``telemetry``), each batch is a ``batch`` span linked to the span of every request it
served, with its ``preprocess`` and ``generate`` stages as children.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from deepsynth_ocr import telemetry
from deepsynth_ocr.timing import StageClock

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """No room for the request; ``retry_after`` is an estimate in whole seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} images are waiting; retry in about {retry_after} s")
        self.waiting, self.retry_after = waiting, retry_after


class GenerationFailed(Exception):
    """Generation raised for this image alone (its batch was retried image by image)."""


@dataclass
class _Job:
    model: str
    row: dict
    bound: int
    future: asyncio.Future
    span: object = None  # the request's span, which the batch span links to
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What the worker reports per batch (the app turns it into metrics)."""

    size: int
    seconds: float
    tokens: int


@dataclass
class Done:
    """An image's result and where its time went (its batch's stages end at ``ended_ns``, wall clock)."""

    result: object
    queued_s: float
    preprocess_s: float
    generate_s: float
    batch_size: int
    ended_ns: int


# run_batch(model name, rows, per-row token bounds, a StageClock for "preprocess"/"generate") -> one result per row
RunBatch = Callable[[str, list[dict], list[int], StageClock], list]


class BatchQueue:
    def __init__(self, run_batch: RunBatch, max_batch_size: int, max_wait_ms: float, max_queue: int,
                 on_batch: Callable[[BatchStats], None] | None = None, tracer=None):
        self.run_batch, self.max_batch_size = run_batch, max_batch_size
        self.max_wait, self.max_queue = max_wait_ms / 1000, max_queue
        self.on_batch = on_batch or (lambda stats: None)
        self.tracer = tracer
        self._pending: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._batch_seconds = 0.0  # moving average, for Retry-After

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="batch-queue")

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done() and not self._closing

    async def close(self) -> None:
        """Answer everything queued, then stop the worker."""
        self._closing = True
        self._wake.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    # --- requests ---------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return sum(not j.future.done() for j in self._pending)

    def submit(self, model: str, rows: list[dict], bounds: list[int], span=None) -> list[asyncio.Future]:
        """Queue one request's images (all or none); returns one future per image, each resolving to ``Done``.
        ``span``: the request's span, linked from the batch span that serves it."""
        if self._closing:
            raise QueueFull(self.depth, 1)
        waiting = self.depth
        if waiting + len(rows) > self.max_queue:
            batches_ahead = math.ceil((waiting + len(rows)) / self.max_batch_size)
            raise QueueFull(waiting, max(1, math.ceil(batches_ahead * (self._batch_seconds or 1.0))))
        loop = asyncio.get_running_loop()
        jobs = [_Job(model, row, bound, loop.create_future(), span) for row, bound in zip(rows, bounds, strict=True)]
        self._pending.extend(jobs)
        self._wake.set()
        return [j.future for j in jobs]

    # --- the worker -------------------------------------------------------------------------------
    def _drop_abandoned(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()

    def _ready_for(self, model: str) -> int:
        return sum(j.model == model and not j.future.done() for j in self._pending)

    async def _sleep_until_woken(self, timeout: float | None) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _run(self) -> None:
        while True:
            self._drop_abandoned()
            if not self._pending:
                if self._closing:
                    return
                await self._sleep_until_woken(None)
                continue
            first = self._pending[0]
            deadline = first.arrived + self.max_wait
            while (not self._closing and self._ready_for(first.model) < self.max_batch_size
                   and (left := deadline - time.monotonic()) > 0):
                await self._sleep_until_woken(left)
            if first.future.done():  # abandoned while waiting for company
                continue
            batch = self._take(first.model)
            await self._generate(batch)

    def _take(self, model: str) -> list[_Job]:
        batch, rest = [], deque()
        for job in self._pending:
            if job.future.done():
                continue
            if job.model == model and len(batch) < self.max_batch_size:
                batch.append(job)
            else:
                rest.append(job)
        self._pending = rest
        return batch

    async def _generate(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        clock = StageClock()
        started, started_ns = time.monotonic(), telemetry.now_ns()
        try:
            with telemetry.span(self.tracer, "batch", {"batch.size": len(batch), "model": batch[0].model},
                                links=list({id(j.span): j.span for j in batch}.values())) as batch_span:
                results = await loop.run_in_executor(self._executor, self.run_batch, batch[0].model,
                                                     [j.row for j in batch], [j.bound for j in batch], clock)
                ended_ns = telemetry.now_ns()
                preprocess_ns = started_ns + int(clock.seconds("preprocess") * 1e9)
                telemetry.record(self.tracer, "preprocess", batch_span, started_ns, preprocess_ns)
                telemetry.record(self.tracer, "generate", batch_span, preprocess_ns, ended_ns)
        except Exception as e:
            if len(batch) == 1:
                log.error("generation failed for one image: %s: %s", type(e).__name__, e)
                _resolve(batch[0].future, exception=GenerationFailed(f"{type(e).__name__}: {e}"))
                return
            log.warning("a batch of %d failed (%s: %s); retrying image by image", len(batch), type(e).__name__, e)
            for job in batch:
                await self._generate([job])
            return
        seconds = time.monotonic() - started
        self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
        self.on_batch(BatchStats(len(batch), seconds, sum(getattr(r, "n_tokens", 0) for r in results)))
        preprocess = clock.seconds("preprocess")
        for job, result in zip(batch, results, strict=True):
            _resolve(job.future, result=Done(result, started - job.arrived, preprocess, seconds - preprocess, len(batch), ended_ns))


def _resolve(future: asyncio.Future, result=None, exception: Exception | None = None) -> None:
    if future.done():  # the request timed out or its client left meanwhile
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
