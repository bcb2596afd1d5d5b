"""``async for piece in request``: the wait for a piece runs in a worker thread (it releases
the GIL), so the event loop keeps serving other requests meanwhile."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

# One waiting thread per request being awaited; threads start only when needed.
_WAITERS = ThreadPoolExecutor(max_workers=512, thread_name_prefix="gpt_rs-request")


async def _next(request):
    piece = await asyncio.get_running_loop().run_in_executor(_WAITERS, request.next_piece)
    if piece is None:
        raise StopAsyncIteration
    return piece


def anext_piece(request):
    """The awaitable ``Request.__anext__`` returns."""
    return _next(request)
