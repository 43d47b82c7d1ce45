"""The proxy's own ``/metrics``: what only the proxy process can know.

LiteLLM mounts ``/metrics`` on the proxy (its prometheus_client registry) only when the
``prometheus`` callback is configured. Some families in that registry do not come from the
Prometheus logger and cannot come from the event stream: they describe the process itself, live
(``litellm_in_flight_requests`` of the in-flight middleware, ``litellm_accounting_*`` of the
spend-log delivery worker, the Python process collectors). Replacing the ``prometheus`` callback
with this one would make the endpoint answer 404 and those families disappear, so the producer
mounts it the same way LiteLLM does (``PrometheusLogger._mount_metrics_endpoint``: the same
path, the same registry, multiprocess mode, and LiteLLM's ``/metrics`` authentication setting).
LiteLLM's business series are not in it: they are never created in the proxy (the aggregator
serves them), so nothing is exported twice.
"""

from __future__ import annotations

import sys

from producer.logs import log

PROXY_MODULE = "litellm.proxy.proxy_server"
METRICS_PATH = "/metrics"


def mount_proxy_metrics_endpoint() -> bool:
    """Mount the proxy's ``/metrics`` as LiteLLM's ``prometheus`` callback does, once.

    Returns True when it is mounted (now or before); False outside the proxy (LiteLLM used as a
    library: nothing is imported). Never raises.
    """
    proxy = sys.modules.get(PROXY_MODULE)
    app = getattr(proxy, "app", None)
    if app is None:
        return False
    try:
        if any(getattr(route, "path", None) == METRICS_PATH for route in app.routes):
            return True
        from litellm.integrations.prometheus import PrometheusLogger

        PrometheusLogger._mount_metrics_endpoint()
        return True
    except Exception as exc:  # a LiteLLM that changed shape: the proxy must still start
        log.warning("litellm-stream-metrics: cannot mount the proxy's /metrics (%r)", exc)
        return False
