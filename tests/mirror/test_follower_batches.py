"""The follower hands the applier whole requests only: a partial request waits for its end."""

from __future__ import annotations

import asyncio

import pytest

from mirror.errors import PartialRequestError
from mirror.follow import follower
from mirror.follow.follower import take_whole_requests
from volume.records import Record


def requests_of(*sizes: int) -> list[Record]:
    """Consecutive records forming requests of the given numbers of ops."""
    out: list[Record] = []
    for size in sizes:
        for i in range(size):
            out.append(Record(len(out) + 1, 1, "mkdir", {}, ends_request=i == size - 1))
    return out


def queued(records: list[Record]) -> asyncio.Queue[Record]:
    queue: asyncio.Queue[Record] = asyncio.Queue()
    for r in records:
        queue.put_nowait(r)
    return queue


async def test_a_batch_ends_at_the_last_boundary_and_the_rest_waits() -> None:
    records = requests_of(2, 3, 4)
    queue = queued(records[1:7])  # the last request has arrived only in part
    batch, held = take_whole_requests([], records[0], queue)
    assert [r.version for r in batch] == [1, 2, 3, 4, 5]
    assert [r.version for r in held] == [6, 7]
    batch, held = take_whole_requests(held, records[7], queued([]))
    assert batch == [] and [r.version for r in held] == [6, 7, 8]
    batch, held = take_whole_requests(held, records[8], queued([]))
    assert [r.version for r in batch] == [6, 7, 8, 9] and held == []


async def test_a_request_longer_than_a_batch_is_assembled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follower, "MAX_BATCH", 4)
    records = requests_of(1, 10, 1)
    queue = queued(records[1:])
    batch, held = take_whole_requests([], records[0], queue)
    assert [r.version for r in batch] == [1] and len(held) == 3
    batches = []
    while not queue.empty():
        batch, held = take_whole_requests(held, queue.get_nowait(), queue)
        if batch:
            batches.append([r.version for r in batch])
    # Up to MAX_BATCH new records per step: 2-4 held, then 5-8, then 9-12 close it.
    assert batches == [list(range(2, 13))]
    assert held == []


async def test_a_stream_without_boundaries_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follower, "MAX_RECORDS_PER_REQUEST", 5)
    records = [Record(i, 1, "mkdir", {}, ends_request=False) for i in range(1, 8)]
    with pytest.raises(PartialRequestError, match="without a request boundary"):
        take_whole_requests([], records[0], queued(records[1:]))
