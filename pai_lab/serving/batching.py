"""Adaptive batching: merge concurrent infer requests into one ``predict`` call.

Why adaptive: a fixed wait (MLServer's ``max_batch_time``) adds its full latency to every
lone request. Here a request that finds the model idle and no one else around runs at
once; requests that arrive while the model is busy queue up and go together in the next
call. The wait of up to ``max_latency_ms`` is only spent when recent traffic showed
concurrency (more requests in flight than the batch holds), so concurrency 1 pays
nothing and concurrency 16 gets full batches.

Requests merge only when their inputs agree on names, datatypes and every dimension but
the first, and ask for the same outputs; the merged arrays are concatenated along axis 0
and each request gets back its own slice.

Where ``predict`` runs: on one executor thread per model, so a slow model never blocks the
event loop — except when the model has proven fast. Handing a call to a thread and back
costs two thread wake-ups (measured 100-300 us on 2 busy cores) plus GIL convoying
against the loop thread, which is more than a sub-millisecond sklearn ``predict`` costs
itself. So the batcher keeps a moving average of the CPU time of its calls and runs calls
inline while that average is under ``inline_max_ms`` (server default 2 ms; 0 = always use the
thread). The loop is then busy for less time than the handoff would have taken, and a
model that turns slow (big batches, a heavy torch net) moves back to the thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .protocol import InferenceError, InferRequest

PredictFn = Callable[[list[np.ndarray], list[str], dict], dict]


class _Item:
    __slots__ = ("inputs", "outputs", "params", "rows", "key", "future", "t0")

    def __init__(self, req: InferRequest, outputs: list[str], future: asyncio.Future):
        self.inputs = [a for _, a in req.inputs]
        self.outputs = outputs
        self.params = req.parameters
        self.rows = req.rows
        self.future = future
        self.t0 = time.monotonic()
        if all(a.ndim >= 1 for a in self.inputs):
            self.key = (
                tuple(outputs),
                tuple((a.dtype.str, a.shape[1:]) for a in self.inputs),
                tuple(sorted((k, repr(v)) for k, v in self.params.items())) if self.params else (),
            )
        else:
            self.key = None  # scalars cannot be concatenated: run alone


class AdaptiveBatcher:
    """Queue + one consumer task per model; ``submit`` returns that request's outputs."""

    def __init__(
        self,
        predict: PredictFn,
        max_batch_size: int = 32,
        max_latency_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
        inline_max_ms: float = 2.0,
    ):
        self.predict = predict
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_latency = max(0.0, float(max_latency_ms)) / 1000.0
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pai-predict")
        self._task: asyncio.Task | None = None
        self._outstanding = 0  # submitted, not yet answered
        self._recent_concurrency = 1
        self.inline_max = max(0.0, float(inline_max_ms)) / 1000.0
        self._avg_call = None  # moving average of predict CPU seconds; None until measured
        self._busy = False  # the consumer is working on a batch
        self.active = 0  # HTTP requests for this model being received or answered

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, req: InferRequest, outputs: list[str]) -> dict:
        if self._task is None:
            self.start()
        avg = self._avg_call
        if (
            not self._busy
            and self._outstanding == 0
            and self.active <= 1
            and self._recent_concurrency <= 1
            and avg is not None
            and avg < self.inline_max
        ):
            # fast path for a lone request to a fast model: no queue, no extra loop turns
            result, took = self._timed_predict([a for _, a in req.inputs], outputs, req.parameters)
            self._avg_call = 0.8 * avg + 0.2 * took
            if self.on_batch is not None:
                self.on_batch(req.rows)
            return result
        fut = asyncio.get_running_loop().create_future()
        self._outstanding += 1
        seen = max(self._outstanding, self.active)
        if seen > self._recent_concurrency:
            self._recent_concurrency = seen
        self._queue.put_nowait(_Item(req, outputs, fut))
        try:
            return await fut
        finally:
            self._outstanding -= 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        q = self._queue
        while True:
            first = await q.get()
            batch = [first]
            rows = first.rows
            if self.max_batch_size > 1:
                rows = self._drain(batch, rows)
                # wait for more only when recent traffic says more are coming
                deadline = first.t0 + self.max_latency
                while (
                    rows < self.max_batch_size
                    and self._recent_concurrency > len(batch)
                    and self.max_latency > 0
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(q.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                    batch.append(item)
                    rows = self._drain(batch, rows + item.rows)
            # decay the concurrency estimate towards what we just saw
            self._recent_concurrency = max(self._outstanding, len(batch), self.active, 1)
            self._busy = True
            try:
                for group in self._groups(batch):
                    await self._run_group(loop, group)
            finally:
                self._busy = False

    def _timed_predict(self, inputs: list, outputs: list, params: dict) -> tuple[dict, float]:
        # CPU time of this thread, not wall time: on a busy machine wall time includes
        # waiting for a core, which says nothing about how long the model holds the loop
        t0 = time.thread_time()
        result = self.predict(inputs, outputs, params)
        return result, time.thread_time() - t0

    def _drain(self, batch: list[_Item], rows: int) -> int:
        q = self._queue
        while rows < self.max_batch_size and not q.empty():
            item = q.get_nowait()
            batch.append(item)
            rows += item.rows
        return rows

    @staticmethod
    def _groups(batch: list[_Item]) -> list[list[_Item]]:
        groups: dict = {}
        alone = []
        for it in batch:
            if it.key is None:
                alone.append([it])
            else:
                groups.setdefault(it.key, []).append(it)
        return list(groups.values()) + alone

    async def _run_group(self, loop: asyncio.AbstractEventLoop, group: list[_Item]) -> None:
        live = [it for it in group if not it.future.done()]  # a client may have gone
        if not live:
            return
        if len(live) == 1:
            inputs = live[0].inputs
        else:
            inputs = [
                np.concatenate(parts, axis=0)
                for parts in zip(*(it.inputs for it in live), strict=True)
            ]
        first = live[0]
        try:
            avg = self._avg_call
            if avg is not None and avg < self.inline_max:
                result, took = self._timed_predict(inputs, first.outputs, first.params)
            else:
                result, took = await loop.run_in_executor(
                    self._executor, self._timed_predict, inputs, first.outputs, first.params
                )
            self._avg_call = took if avg is None else 0.8 * avg + 0.2 * took
        except Exception as e:  # the error belongs to every request in the group
            for it in live:
                if not it.future.done():
                    it.future.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(sum(it.rows for it in live))
        if len(live) == 1:
            if not first.future.done():
                first.future.set_result(result)
            return
        total = sum(it.rows for it in live)
        bad = [n for n, a in result.items() if np.ndim(a) == 0 or len(a) != total]
        if bad:
            err = InferenceError(
                f"outputs {bad} do not have one row per input row; "
                "disable batching for this model (max_batch_size=1)",
                500,
            )
            for it in live:
                if not it.future.done():
                    it.future.set_exception(err)
            return
        start = 0
        for it in live:
            end = start + it.rows
            if not it.future.done():
                it.future.set_result({n: a[start:end] for n, a in result.items()})
            start = end
