"""Run a blocking engine reply in a worker thread and hand its pieces to a platform's event loop."""

from __future__ import annotations

import asyncio
import threading

_DONE = object()


class StreamedReply:
    """Async iterator over the text pieces of an engine Reply made in a worker thread.

    `start` is a blocking callable returning an engine Reply (engine.reply / engine.regenerate);
    its errors (GeneratorBusy, UnknownCharacter, ...) are raised from the first `__anext__`. Each
    reply gets its own thread, not a shared pool: a long reply must not starve short ones.
    `whole`: the platform shows nothing until the end, so the reply is waited for and handed over in
    one piece; nothing counts as shown, and the degeneration guard may re-sample it once.
    """

    def __init__(self, start, whole: bool = False):
        self._start, self._whole = start, whole
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self.reply = None
        self._thread = threading.Thread(target=self._work, name="personae-reply", daemon=True)
        self._thread.start()

    def _put(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop closed while we were generating
            self._stop.set()

    def _work(self) -> None:
        try:
            reply = self.reply = self._start()
            if self._whole:
                reply.result()
                self._put(reply.stream.text)
                self._put(_DONE)
                return
            for piece in reply:
                if self._stop.is_set():
                    reply.cancel()
                    break
                self._put(piece)
            self._put(_DONE)
        except BaseException as error:  # handed to the event loop, which decides what to say
            self._put(error)

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        item = await self._queue.get()
        if item is _DONE:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        """Stop generating (the platform is closing); nothing is logged for a cancelled reply."""
        self._stop.set()
        if self.reply is not None:
            self.reply.cancel()

    @property
    def logged(self) -> dict | None:
        """The logged reply row once iteration has ended (None if it was cancelled).

        The Reply logs itself when its own iteration ends, before the worker hands over the end.
        """
        return self.reply.message if self.reply is not None else None
