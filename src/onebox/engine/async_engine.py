"""Drives :class:`LLMEngine` from a background thread and streams results to asyncio callers.

PyTorch releases the GIL inside its kernels, so the event loop (HTTP, detokenization) keeps
running while a step computes. Requests are admitted synchronously on the caller's thread (so
overload and validation errors reach the caller before anything is streamed); the step thread
sleeps when there is no work and wakes on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from onebox.engine.config import EngineConfig
from onebox.engine.llm_engine import LLMEngine
from onebox.engine.types import EngineStats, RequestOutput, SamplingParams
from onebox.errors import OneboxError

log = logging.getLogger(__name__)


class EngineDeadError(OneboxError):
    """The engine's step thread failed; the worker must be restarted."""

    code = "engine_dead"


class AsyncLLMEngine:
    """Satisfies :class:`onebox.engine.protocol.TextEngine`."""

    engine: LLMEngine
    """Set by the step thread once it has built the engine."""

    def __init__(self, build: Callable[[], LLMEngine]) -> None:
        """``build`` runs on the step thread: every PyTorch call of the engine (loading included)
        must happen on that one thread. A second thread that touches OpenMP makes libgomp see more
        threads than cores and switch to near-zero spinning, which cost 35% of decode speed here."""
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._queues: dict[
            str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[RequestOutput | BaseException]]
        ] = {}
        self._qlock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._error: BaseException | None = None
        built: Future[LLMEngine] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(build, built), name="onebox-engine", daemon=True
        )
        self._thread.start()
        built.result()  # re-raises a load error on the caller's thread; _run set self.engine
        self.max_model_len = self.engine.max_model_len
        self.eos_token_ids = self.engine.eos_token_ids

    @classmethod
    def from_model_dir(cls, model_dir: Path, config: EngineConfig) -> AsyncLLMEngine:
        return cls(lambda: LLMEngine.from_model_dir(model_dir, config))

    def _run(self, build: Callable[[], LLMEngine], built: Future[LLMEngine]) -> None:
        try:
            engine = build()
        except BaseException as exc:
            built.set_exception(exc)
            return
        self.engine = engine
        built.set_result(engine)
        self._loop()

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the step thread between two steps and return its result (or raise)."""
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[Any] = Future()
        self._calls.put((fn, fut))
        self._wake.set()
        return fut.result()

    def _run_calls(self) -> None:
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    # -- the step thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop:
            self._run_calls()
            if not self.engine.has_work:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a bug or a device error: fail the affected requests
                log.exception("engine step failed")
                self._fail_all(exc)
                continue
            if outputs:
                self._dispatch(outputs)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        with self._qlock:
            for o in outputs:
                entry = self._queues.get(o.request_id)
                if entry is None:
                    continue
                if o.finished:
                    del self._queues[o.request_id]
                by_loop.setdefault(entry[0], []).append((entry[1], o))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
                loop.call_soon_threadsafe(_put_all, items)

    def _fail_all(self, exc: BaseException) -> None:
        with self._qlock:
            entries = list(self._queues.items())
        for rid, (loop, q) in entries:
            self.engine.abort(rid)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(q.put_nowait, exc)
        with self._qlock:
            for rid, _ in entries:
                self._queues.pop(rid, None)

    # -- the TextEngine API ------------------------------------------------------------------

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        adapter: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        if not self._thread.is_alive():
            raise EngineDeadError("the inference engine has stopped")
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        with self._qlock:
            self._queues[request_id] = (asyncio.get_running_loop(), queue)
        try:
            self.engine.add_request(request_id, prompt_token_ids, params, adapter)
        except BaseException:
            with self._qlock:
                self._queues.pop(request_id, None)
            raise
        self._wake.set()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finished:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                with self._qlock:
                    self._queues.pop(request_id, None)
                self.engine.abort(request_id)
                self._wake.set()

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self._wake.set()

    def load_adapter(self, name: str, path: Path) -> None:
        self._call(lambda: self.engine.loras.load(name, Path(path)))

    def unload_adapter(self, name: str) -> None:
        self.engine.loras.unload(name)

    def adapters(self) -> list[str]:
        return self.engine.loras.names()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def healthy(self) -> bool:
        """False once the step thread has died (the worker should answer 503 and be restarted)."""
        return self._thread.is_alive() and not self._stop

    async def shutdown(self) -> None:
        with self._qlock:
            ids = list(self._queues)
        for rid in ids:
            self.engine.abort(rid)
        self._wake.set()
        await asyncio.sleep(0)
        self._stop = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join, 10)


def _put_all(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for q, o in items:
        q.put_nowait(o)
