"""Flush the producer when the LiteLLM proxy stops, before the process dies.

Why ``atexit`` is not enough: uvicorn (alone, with ``--num_workers N``, or as gunicorn's
worker) handles SIGTERM by shutting the server down and then raising the signal again with the
handler it found at start, which is the default one: the process dies of SIGTERM and
``atexit`` handlers never run. What does run is the ASGI lifespan's teardown: LiteLLM drains
the in-flight requests, runs the logging callbacks still queued (so every event of an answered
request has reached the producer), and then awaits ``proxy_shutdown_event()``. That call is the
last step of the proxy's own shutdown path on every server LiteLLM starts (uvicorn, gunicorn,
hypercorn, granian), so the producer closes its emitters there: the buffer is flushed within
``LSM_SHUTDOWN_TIMEOUT`` and the final counters are written, before LiteLLM's own teardown
(database, caches) runs, so a teardown step that hangs cannot hold the events back.

``proxy_shutdown_event`` is looked up by name in LiteLLM's proxy module when the lifespan
calls it, so wrapping the module attribute is enough. Outside the proxy (LiteLLM used as a
library) nothing is wrapped and ``atexit`` flushes as before.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from producer.logs import log

PROXY_MODULE = "litellm.proxy.proxy_server"
SHUTDOWN_FUNCTION = "proxy_shutdown_event"
_WRAPPED = "__lsm_flushes_producer__"


def install_proxy_shutdown_hook(close_all: Callable[[], None]) -> bool:
    """Make the proxy's shutdown path call ``close_all`` (blocking; run in a thread) first.

    Returns True when the hook is in place (now or from an earlier call). Does nothing and
    returns False when LiteLLM's proxy is not loaded in this process. Never raises.
    """
    module = sys.modules.get(PROXY_MODULE)
    if module is None:
        return False
    try:
        original = getattr(module, SHUTDOWN_FUNCTION, None)
        if getattr(original, _WRAPPED, False):
            return True
        if original is None or not inspect.iscoroutinefunction(original):
            log.warning(
                "litellm-stream-metrics: this LiteLLM proxy has no coroutine %s.%s(); events still buffered "
                "when the proxy is stopped with SIGTERM may be lost (see docs/operations.md, 'Stopping a proxy')",
                PROXY_MODULE,
                SHUTDOWN_FUNCTION,
            )
            return False
        setattr(module, SHUTDOWN_FUNCTION, _flushing_first(original, close_all))
        return True
    except Exception as exc:  # a LiteLLM that changed shape: the proxy must still start
        log.warning("litellm-stream-metrics: cannot hook the proxy's shutdown (%r); flushing at exit only", exc)
        return False


def _flushing_first(
    original: Callable[..., Awaitable[Any]], close_all: Callable[[], None]
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def proxy_shutdown_event(*args: Any, **kwargs: Any) -> Any:
        try:
            await asyncio.to_thread(close_all)
        except Exception as exc:  # never stand in the way of the proxy's own shutdown
            log.warning("litellm-stream-metrics: flushing at proxy shutdown failed: %r", exc)
        return await original(*args, **kwargs)

    setattr(proxy_shutdown_event, _WRAPPED, True)
    return proxy_shutdown_event
