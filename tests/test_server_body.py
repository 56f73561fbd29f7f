"""The server's ``_data`` body reader: read-ahead order, errors, limits and early stop.

``_Body.stream_from`` runs in a worker thread while a task on the event loop reads ahead;
these tests drive it with a scripted ASGI ``receive`` instead of a socket.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from adjobs import server
from adjobs.errors import ApiError
from adjobs.server import ClientDisconnected, _Body


def _drain_in_thread(body: _Body, stop_after: int | None = None) -> tuple[list[bytes], object]:
    """Iterate ``body.stream_from`` in a thread, as an upload does; batches and the error."""

    async def main() -> tuple[list[bytes], object]:
        loop = asyncio.get_running_loop()
        batches: list[bytes] = []
        outcome: list[object] = [None]

        def consume() -> None:
            stream = body.stream_from(loop)
            try:
                for batch in stream:
                    batches.append(batch)
                    if stop_after is not None and len(batches) == stop_after:
                        stream.close()  # what an upload that fails half-way does
                        return
            except Exception as error:  # noqa: BLE001 - the outcome under test
                outcome[0] = error

        thread = threading.Thread(target=consume)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.001)
        return batches, outcome[0]

    return asyncio.run(main())


def _scripted(messages: list[dict], reads: list[int] | None = None):
    async def receive() -> dict:
        if reads is not None:
            reads.append(1)
        if not messages:
            await asyncio.sleep(3600)  # a client that sends nothing more
        return messages.pop(0)

    return receive


def _chunks(sizes: list[int], last_more: bool = False) -> list[dict]:
    messages = []
    for index, size in enumerate(sizes):
        more = index < len(sizes) - 1 or last_more
        messages.append(
            {"type": "http.request", "body": bytes([65 + index]) * size, "more_body": more}
        )
    return messages


def test_batches_arrive_whole_and_in_order(monkeypatch):
    monkeypatch.setattr(server, "FEED_BATCH_BYTES", 10)
    messages = _chunks([4, 4, 4, 4, 4, 3])
    expected = b"".join(m["body"] for m in messages)
    batches, error = _drain_in_thread(_Body(_scripted(messages), 1 << 20, gzip=False))
    assert error is None
    assert b"".join(batches) == expected
    # Each batch is "about FEED_BATCH_BYTES": whole messages until it is reached.
    assert [len(b) for b in batches] == [12, 11]


def test_a_disconnect_reaches_the_thread_after_the_batches_before_it(monkeypatch):
    monkeypatch.setattr(server, "FEED_BATCH_BYTES", 8)
    messages = _chunks([8, 8], last_more=True) + [{"type": "http.disconnect"}]
    batches, error = _drain_in_thread(_Body(_scripted(messages), 1 << 20, gzip=False))
    assert batches == [b"A" * 8, b"B" * 8]
    assert isinstance(error, ClientDisconnected)


def test_a_body_over_the_limit_fails_with_413_after_what_fitted(monkeypatch):
    monkeypatch.setattr(server, "FEED_BATCH_BYTES", 8)
    messages = _chunks([8, 8, 8])
    batches, error = _drain_in_thread(_Body(_scripted(messages), 20, gzip=False))
    assert batches == [b"A" * 8, b"B" * 8]
    assert isinstance(error, ApiError) and error.status == 413


def test_an_idle_body_fails_with_408(monkeypatch):
    monkeypatch.setattr(server, "FEED_BATCH_BYTES", 8)
    messages = _chunks([8], last_more=True)  # then nothing more arrives
    body = _Body(_scripted(messages), 1 << 20, gzip=False, idle_timeout=0.05)
    batches, error = _drain_in_thread(body)
    assert batches == [b"A" * 8]
    assert isinstance(error, ApiError) and error.status == 408


def test_reading_ahead_is_bounded_and_stops_when_the_reader_stops(monkeypatch):
    monkeypatch.setattr(server, "FEED_BATCH_BYTES", 8)
    reads: list[int] = []
    messages = _chunks([8] * 50)
    batches, error = _drain_in_thread(
        _Body(_scripted(messages, reads), 1 << 20, gzip=False), stop_after=1
    )
    assert error is None and batches == [b"A" * 8]
    # One batch consumed, at most READ_AHEAD_BATCHES queued and one being assembled.
    assert len(reads) <= 1 + server.READ_AHEAD_BATCHES + 1
    assert len(messages) >= 50 - (2 + server.READ_AHEAD_BATCHES)


@pytest.mark.parametrize("gzip", [False, True])
def test_an_empty_body_yields_nothing(gzip):
    body = _Body(_scripted([]), 1 << 20, gzip=gzip)
    body.done = True
    batches, error = _drain_in_thread(body)
    assert batches == [] and error is None
