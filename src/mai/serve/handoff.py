"""The bridge from the engine thread to the event loop: a request's sequences go in, their outputs come
back on an asyncio queue, and a client that hangs up cancels them."""

import asyncio
import threading
import weakref

from starlette.requests import Request

from mai.errors import InternalError, MaiError
from mai.serve.engine import Engine, Output, SamplingParams, Sequence

Job = tuple[list[int], SamplingParams]  # one choice: its prompt's token ids and its sampling


class Handoff:
    """Carries outputs from the engine thread onto an event loop's queues, one wake-up per burst.

    The engine reports every running sequence's token each step; waking the loop once per token
    (call_soon_threadsafe each time) costs more than decoding the token when 32 rows run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pending: list[tuple[asyncio.Queue, tuple]] = []
        self.lock = threading.Lock()

    def put(self, queue: asyncio.Queue, item: tuple) -> None:
        """Queue `item` on `queue`; callable from any thread."""
        with self.lock:
            self.pending.append((queue, item))
            if len(self.pending) > 1:
                return  # a delivery is already scheduled and will take this one too
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for queue, item in pending:
            queue.put_nowait(item)


HANDOFFS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Handoff]" = weakref.WeakKeyDictionary()


def handoff_of(loop: asyncio.AbstractEventLoop) -> Handoff:
    if loop not in HANDOFFS:
        HANDOFFS[loop] = Handoff(loop)
    return HANDOFFS[loop]


class Submitted:
    """The choices of one request in the engine; their outputs arrive on `queue` as (choice, Output)."""

    def __init__(self, engine: Engine, jobs: list[Job]):
        if len(jobs) > engine.max_waiting:
            raise MaiError(
                f"this request asks for {len(jobs)} sequences (prompts × n) but the server queues at most "
                f"{engine.max_waiting}; send fewer prompts or a smaller n",
                parameter="n",
            )
        handoff, self.queue = handoff_of(asyncio.get_running_loop()), asyncio.Queue()
        self.sequences = [
            Sequence(ids, params, lambda out, i=i: handoff.put(self.queue, (i, out)))
            for i, (ids, params) in enumerate(jobs)
        ]
        engine.submit(self.sequences)

    def cancel(self) -> None:
        for seq in self.sequences:
            seq.cancel()


async def outputs_of(submitted: Submitted, request: Request):
    """(choice, Output) until every choice has finished, or until the client goes away: then it
    stops early and cancels them all, and their rows leave the batch at the engine's next step."""
    watcher = asyncio.create_task(wake_on_hang_up(request, submitted.queue))
    done, count = 0, len(submitted.sequences)
    try:
        while done < count:
            choice, out = await submitted.queue.get()
            if out is None:
                return
            if out.finish_reason == "error":
                raise InternalError("the engine failed on this request; see the server log")
            done += out.finish_reason is not None
            yield choice, out
    finally:
        watcher.cancel()
        submitted.cancel()


async def wake_on_hang_up(request: Request, queue: asyncio.Queue) -> None:
    """Put (None, None) on `queue` once the client has gone away.

    Once the body is read, the ASGI receive channel answers only when the client disconnects, so
    waiting on it costs nothing per token, where polling `request.is_disconnected()` would.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
    queue.put_nowait((None, None))


async def collect(submitted: Submitted, request: Request) -> list[list[Output]]:
    """Every choice's outputs, once all have finished."""
    outputs = [[] for _ in submitted.sequences]
    async for choice, out in outputs_of(submitted, request):
        outputs[choice].append(out)
    if not all(outs and outs[-1].finish_reason for outs in outputs):
        # nginx's status for a client that closed the request; nobody reads the answer, /metrics counts it
        raise MaiError("the client closed the connection before the answer was ready", status=499)
    return outputs
