"""The producer's log inside the LiteLLM proxy.

The proxy does not configure Python's root logger (uvicorn and LiteLLM log through their own
handlers), so records of level INFO from a library would vanish. The producer's few lines (where
it writes at start, what it flushed at shutdown) are worth seeing: its logger gets the level of
``LSM_LOG_LEVEL`` and, when nobody else would print its records, a handler of its own.
"""

from __future__ import annotations

import atexit
import logging
import sys

LOGGER_NAME = "litellm_stream_metrics.producer"
log = logging.getLogger(LOGGER_NAME)
_HANDLER_MARK = "_lsm_producer_handler"


def configure_logging(level: str) -> None:
    """Set the producer logger's level; add a stderr handler when no handler would print it."""
    log.setLevel(level.upper())
    if any(getattr(h, _HANDLER_MARK, False) for h in log.handlers):
        return
    if logging.getLogger().handlers:
        return  # the application configured logging: our records go where its records go
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    setattr(handler, _HANDLER_MARK, True)
    log.addHandler(handler)
    log.propagate = False


def repeat_at_exit(message: str) -> None:
    """Print ``message`` once more when the process exits: a start-up error of the producer
    otherwise ends up above hundreds of lines of LiteLLM's and uvicorn's tracebacks."""
    atexit.register(lambda: print(message, file=sys.stderr, flush=True))
