"""The bounded admission queue: FIFO slots, depth and wait limits, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from chatd.api.admission import AdmissionGate, AdmissionRejected


async def test_admits_up_to_capacity_then_queues_fifo() -> None:
    gate = AdmissionGate(2, max_queue=4, max_wait=5)
    a = await gate.acquire()
    b = await gate.acquire()
    order: list[str] = []

    async def wait(name: str, weight: int = 1) -> None:
        ticket = await gate.acquire(weight)
        order.append(name)
        ticket.release()

    waiters = [asyncio.create_task(wait("c", 2)), asyncio.create_task(wait("d"))]
    await asyncio.sleep(0)
    assert gate.depth == 2 and gate.in_use == 2
    a.release()
    await asyncio.sleep(0)
    assert order == []  # "c" needs both slots; "d" must not overtake it
    b.release()
    b.release()  # idempotent
    await asyncio.gather(*waiters)
    assert order == ["c", "d"]
    assert gate.in_use == 0 and gate.depth == 0


async def test_queue_full_is_503_with_retry_after() -> None:
    gate = AdmissionGate(1, max_queue=1, max_wait=5)
    held = await gate.acquire()
    queued = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    with pytest.raises(AdmissionRejected) as exc:
        await gate.acquire()
    err = exc.value
    assert err.status_code == 503 and err.code == "server_overloaded"
    assert err.reason == "queue_full" and int(err.headers["Retry-After"]) >= 1
    held.release()
    (await queued).release()


async def test_wait_limit_is_503_and_leaves_no_trace() -> None:
    gate = AdmissionGate(1, max_queue=4, max_wait=0.05)
    held = await gate.acquire()
    with pytest.raises(AdmissionRejected) as exc:
        await gate.acquire()
    assert exc.value.reason == "queue_timeout"
    assert gate.depth == 0
    held.release()
    (await gate.acquire()).release()
    assert gate.in_use == 0


async def test_cancelled_waiter_frees_its_place() -> None:
    gate = AdmissionGate(1, max_queue=4, max_wait=5)
    held = await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.depth == 0
    held.release()
    assert gate.in_use == 0


async def test_close_refuses_waiters_and_newcomers() -> None:
    gate = AdmissionGate(1, max_queue=4, max_wait=5)
    held = await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.close()
    with pytest.raises(AdmissionRejected) as exc:
        await waiter
    assert exc.value.reason == "shutting_down"
    with pytest.raises(AdmissionRejected):
        await gate.acquire()
    held.release()
    assert gate.in_use == 0
