"""How a request's token events cross from the engine thread to the event loop."""

from __future__ import annotations

import asyncio

from chatd.engine.sampling import Sampler
from chatd.engine.sequence import Group, Sequence, Status
from chatd.engine.types import GenerationRequest, SamplingParams, TokenEvent


def make_group(*, n: int, final_only: bool) -> tuple[Group, asyncio.Queue]:
    params = SamplingParams()
    queue: asyncio.Queue[list[TokenEvent]] = asyncio.Queue()
    group = Group(GenerationRequest([1, 2], params, n=n, final_only=final_only),
                  loop=asyncio.get_running_loop(), queue=queue)
    group.seqs.extend(Sequence(group=group, index=i, sampler=Sampler(params, 10, [1, 2]),
                               tokens=[1, 2], n_prompt=2) for i in range(n))
    return group, queue


def step(group: Group, index: int, token: int, finish: str | None = None) -> None:
    """What the engine does for one sampled token, then its flush at the step's end."""
    group.outbox.append(TokenEvent(index=index, token_id=token, text="x",
                                   finish_reason=finish))  # type: ignore[arg-type]
    if finish:
        group.seqs[index].status = Status.FINISHED
    group.flush()


async def handed_over(queue: asyncio.Queue) -> list[list[int]]:
    await asyncio.sleep(0)  # call_soon_threadsafe callbacks run on the next loop pass
    batches = []
    while not queue.empty():
        batches.append([e.token_id for e in queue.get_nowait()])
    return batches


async def test_streaming_events_are_handed_over_every_step() -> None:
    group, queue = make_group(n=1, final_only=False)
    step(group, 0, 5)
    step(group, 0, 6)
    assert await handed_over(queue) == [[5], [6]]


async def test_final_only_events_wait_until_every_choice_has_finished() -> None:
    group, queue = make_group(n=2, final_only=True)
    step(group, 0, 5)
    step(group, 1, 7)
    step(group, 0, 6, finish="length")
    assert await handed_over(queue) == []  # choice 1 is still running
    step(group, 1, 8, finish="stop")
    assert await handed_over(queue) == [[5, 7, 6, 8]]
    assert not group.outbox
