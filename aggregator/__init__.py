"""litellm-stream-metrics aggregator: consumes the event stream and keeps exact, durable metrics."""

__version__ = "0.1.0"
