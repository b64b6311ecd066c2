"""The claim table: a call sent ahead either runs or is taken back, never both."""

from __future__ import annotations

import multiprocessing
import random
from concurrent.futures import CancelledError
from typing import Any

import pytest

from stalwart._claims import (
    RING,
    ClaimTable,
    TaskFuture,
    claim_started,
    mark_sent_ahead,
    take_back,
)

pytestmark = pytest.mark.timeout(60)


def test_a_started_call_cannot_be_revoked() -> None:
    table = ClaimTable()
    try:
        assert table.start(1)
        assert table.started() == 1
        assert not table.revoke(1)
    finally:
        table.close()


def test_a_revoked_call_is_skipped_by_the_worker() -> None:
    table = ClaimTable()
    try:
        assert table.revoke(2)
        assert table.start(1)
        assert not table.start(2)
        assert table.start(3)
        assert table.started() == 3
    finally:
        table.close()


def test_an_old_revocation_does_not_hit_a_call_a_ring_later() -> None:
    table = ClaimTable()
    try:
        assert table.revoke(5)
        assert not table.start(5)
        assert table.start(5 + RING)
    finally:
        table.close()


def _claim_all(table: ClaimTable, count: int, ran: Any) -> None:
    """Runs in another process: claim calls 1..count, as a worker would (with
    a moment of work between them, so the parent can keep up)."""
    claimed = []
    for seq in range(1, count + 1):
        if table.start(seq):
            claimed.append(seq)
        sum(range(100))  # the call's work
    ran.extend(claimed)


def test_worker_and_parent_racing_agree_on_every_call() -> None:
    """A worker claims 20,000 calls while the parent revokes calls just ahead
    of it: every call ends up run by the worker or revoked by the parent,
    exactly once."""
    count = 20_000
    table = ClaimTable()
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        ran = manager.list()
        worker = context.Process(target=_claim_all, args=(table, count, ran))
        worker.start()
        revoked = set()
        rng = random.Random(7)
        while worker.exitcode is None and table.started() < count:
            # Right at the worker's frontier, where the two really race (and
            # never a ring ahead of it, as the dispatcher's capacity ensures).
            seq = table.started() + rng.randint(1, 4)
            if seq <= count and seq not in revoked and table.revoke(seq):
                revoked.add(seq)
        worker.join(60)
        assert worker.exitcode == 0
        ran_set = set(ran)
    table.close()
    assert ran_set.isdisjoint(revoked)
    assert ran_set | revoked == set(range(1, count + 1))
    assert revoked, "the parent never won a race: the test proved nothing"


class FakeSent:
    """A call sent ahead to a fake worker."""

    def __init__(self, table: ClaimTable, seq: int) -> None:
        self.table = table
        self.seq = seq
        self.taken_back = 0

    def take_back(self) -> bool:
        if not self.table.revoke(self.seq):
            return False
        self.taken_back += 1
        return True


def test_cancel_takes_back_a_call_the_worker_has_not_started() -> None:
    table = ClaimTable()
    future = TaskFuture()
    sent = FakeSent(table, 1)
    assert mark_sent_ahead(future, sent)
    assert not future.running()  # sent ahead is not running
    called = []
    future.add_done_callback(called.append)
    assert future.cancel()
    assert future.cancelled()
    assert called == [future]
    assert sent.taken_back == 1
    assert not table.start(1)  # the worker skips it
    with pytest.raises(CancelledError):
        future.result(0)
    table.close()


def test_cancel_fails_once_the_worker_started_the_call() -> None:
    table = ClaimTable()
    future = TaskFuture()
    assert mark_sent_ahead(future, FakeSent(table, 1))
    assert table.start(1)
    assert not future.cancel()
    assert future.running()
    assert claim_started(future)  # the dispatcher's later claim agrees
    future.set_result("ran")
    assert future.result(0) == "ran"
    table.close()


def test_a_cancelled_future_is_never_sent() -> None:
    future = TaskFuture()
    assert future.cancel()
    assert not mark_sent_ahead(future, FakeSent(ClaimTable(), 1))


def test_the_dispatcher_taking_a_call_back_leaves_it_pending() -> None:
    table = ClaimTable()
    future = TaskFuture()
    assert mark_sent_ahead(future, FakeSent(table, 1))
    assert take_back(future, table, 1) is True
    assert not future.done()
    assert future.cancel()  # plain again: no worker holds it
    table.close()
