"""litellm-stream-metrics producer: the LiteLLM callback that streams metric events to Redis.

Add it to the proxy's ``config.yaml``::

    litellm_settings:
      callbacks: ["producer.stream_metrics_logger"]

Importing this package is cheap: LiteLLM-dependent modules load only when
``stream_metrics_logger`` or ``StreamMetricsLogger`` is first accessed.
"""

from __future__ import annotations

import threading
from typing import Any

__version__ = "0.1.0"

_instance: Any = None
_instance_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    global _instance
    if name == "StreamMetricsLogger":
        from producer.callback import StreamMetricsLogger

        return StreamMetricsLogger
    if name == "stream_metrics_logger":
        with _instance_lock:
            if _instance is None:
                from producer.callback import StreamMetricsLogger

                _instance = StreamMetricsLogger()
            return _instance
    raise AttributeError(f"module 'producer' has no attribute {name!r}")
