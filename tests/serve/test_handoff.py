"""The engine-to-event-loop handoff: a burst of outputs from the engine thread costs one loop wake-up."""

import asyncio
import threading

from mai.serve.handoff import Handoff


def test_a_burst_put_while_the_loop_is_busy_wakes_it_once_and_keeps_every_queue_in_order():
    async def main():
        loop = asyncio.get_running_loop()
        wakeups = []
        call_soon_threadsafe = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *args: wakeups.append(args) or call_soon_threadsafe(*args)
        handoff = Handoff(loop)
        queues = [asyncio.Queue() for _ in range(4)]
        step = threading.Thread(target=lambda: [handoff.put(queues[i % 4], (i,)) for i in range(32)])
        step.start()
        step.join()  # blocks the loop, as a busy loop would be, while one engine step reports 32 tokens
        received = [[await asyncio.wait_for(q.get(), 5) for _ in range(8)] for q in queues]
        assert received == [[(i,) for i in range(row, 32, 4)] for row in range(4)]
        assert len(wakeups) == 1
        handoff.put(queues[0], ("next step",))  # after a delivery, the next burst wakes the loop again
        assert await asyncio.wait_for(queues[0].get(), 5) == ("next step",) and len(wakeups) == 2

    asyncio.run(main())
