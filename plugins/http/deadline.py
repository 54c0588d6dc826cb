"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on a request's headers: slowloris sockets get closed."""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol


def with_header_deadline(seconds: float) -> type[H11Protocol]:
    """The protocol class for uvicorn.Config(http=...): a connection whose request headers are not complete
    `seconds` after it opened (or after its last response) is closed. uvicorn alone waits for them forever."""

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport) -> None:
            self._deadline = None
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's headers get the same time (idle ones: keep-alive closes sooner)

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(seconds, self._late)

        def _late(self) -> None:
            self._deadline = None
            # A request whose headers came is in progress (its body has its own limit): leave it be.
            waiting_for_headers = self.cycle is None or self.cycle.response_complete
            if waiting_for_headers and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline
