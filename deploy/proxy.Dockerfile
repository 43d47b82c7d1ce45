# syntax=docker/dockerfile:1
#
# The LiteLLM proxy image with the producer callback installed (used by deploy/compose.yaml).
# Build from the repository root:
#
#   docker build -f deploy/proxy.Dockerfile --build-arg LITELLM_IMAGE=ghcr.io/berriai/litellm:<tag> .
#
# With a published package the same is one line on top of your own proxy image:
#   RUN pip install --no-cache-dir litellm-stream-metrics
# The producer needs only redis and orjson; it is enabled by the proxy's config.yaml
# (callbacks: ["producer.stream_metrics_logger"]) and configured by LSM_* variables.
ARG LITELLM_IMAGE=ghcr.io/berriai/litellm:main-v1.110.2
FROM ${LITELLM_IMAGE}

COPY pyproject.toml README.md /tmp/lsm-src/
COPY producer/ /tmp/lsm-src/producer/
COPY aggregator/ /tmp/lsm-src/aggregator/
# No extras: the proxy only imports the producer package (the aggregator package is installed
# alongside but never imported, and its extras are not).
RUN pip install --no-cache-dir /tmp/lsm-src && rm -rf /tmp/lsm-src
