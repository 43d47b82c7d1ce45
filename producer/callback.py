"""The LiteLLM callback: every hook and direct method of LiteLLM's ``PrometheusLogger``,
turned into an event and handed to the emitter.

Why a subclass of ``PrometheusLogger``: LiteLLM's router and proxy find "the Prometheus logger"
with ``isinstance(callback, PrometheusLogger)`` (router cooldowns and provider budgets in
``litellm.callbacks`` / ``litellm._async_success_callback``, guardrail timings in
``litellm.callbacks``, the spend-capture-rate and budget cron through
``logging_callback_manager.get_custom_loggers_for_type(PrometheusLogger)``,
``PrometheusLogger.get_instance()`` for team member counts and managed batches). Subclassing
makes all of those calls reach this callback. ``PrometheusLogger.__init__`` is deliberately not
called: no in-process metric is created, nothing is registered in prometheus_client.

Every public method of ``PrometheusLogger`` that this class does not implement (a newer LiteLLM
may add some) is replaced by a harmless no-op at class creation, so no call can reach code that
expects in-process metrics.

Every method returns quickly and never raises: failures to build an event are counted as
``extract_error`` drops.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.integrations.prometheus import PrometheusLogger

from producer import events, wire
from producer.emitter import Emitter, close_all
from producer.lifecycle import install_proxy_shutdown_hook
from producer.logs import configure_logging, log, repeat_at_exit
from producer.proxy_metrics import mount_proxy_metrics_endpoint
from producer.settings import ProducerConfigError, ProducerSettings
from producer.urls import passwords_in, safe_url


class StreamMetricsLogger(PrometheusLogger):  # type: ignore[misc]
    """Drop-in replacement for LiteLLM's ``PrometheusLogger`` that streams events to Redis."""

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        emitter: Emitter | None = None,
        **kwargs: Any,
    ) -> None:
        CustomLogger.__init__(self, **kwargs)
        try:
            self.settings = settings or (emitter.settings if emitter else ProducerSettings.from_env())
        except ProducerConfigError as exc:
            repeat_at_exit(f"litellm-stream-metrics: cannot start, invalid configuration: {exc}")
            raise
        configure_logging(self.settings.log_level)
        self.emitter = emitter or Emitter(self.settings)
        self._extract_errors_logged = 0
        self._exemplars = self.settings.exemplars
        # Inside the proxy: flush on its shutdown path too (a SIGTERM skips atexit).
        install_proxy_shutdown_hook(close_all)
        if self.settings.proxy_metrics_endpoint:
            mount_proxy_metrics_endpoint()
        # The writer starts now: the counters key shows in Redis before the first event.
        self.emitter.start()
        s = self.settings
        log.info(
            "litellm-stream-metrics: producer %s writes to %s, stream %s (%d shard(s)); buffer <= %d events / %d "
            "bytes, flush every %s s",
            self.emitter.producer_id,
            safe_url(s.redis_url, passwords_in(s.redis_url)),
            self.emitter.stream,
            s.shards,
            s.buffer_max_events,
            s.buffer_max_bytes,
            s.flush_interval,
        )

    # -- plumbing ---------------------------------------------------------------------------------

    def _emit(self, build: Callable[..., events.Event | list[Any] | None], *args: Any, **kwargs: Any) -> None:
        try:
            event = build(*args, **kwargs)
            if event is None:
                self.emitter.count_skipped()
                return
            data = wire.encode_event(event)
        except Exception as exc:
            self._extract_failed(build, exc)
            return
        self.emitter.offer(data)

    def _extract_failed(self, build: Callable[..., Any], exc: Exception) -> None:
        self.emitter.count_dropped("extract_error")
        if self._extract_errors_logged < 5:
            self._extract_errors_logged += 1
            log.warning("litellm-stream-metrics: could not build an event (%s): %r", build.__name__, exc)

    def _emit_simple(self, kind: str, **fields: Any) -> None:
        self._emit(events.simple_event, kind, **fields)

    def close(self, timeout: float | None = None) -> bool:
        """Flush buffered events and stop the writer (also runs at interpreter exit)."""
        return self.emitter.close(timeout)

    # -- CustomLogger hooks -----------------------------------------------------------------------

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        # The hottest path of the product: ``_emit`` inlined.
        try:
            event = events.success_event(self, kwargs, response_obj, start_time, end_time)
            if event is None:
                self.emitter.count_skipped()
                return
            if self._exemplars:
                event[-1] = events.trace_id(kwargs)
            data = wire.encode_event(event)
        except Exception as exc:
            self._extract_failed(events.success_event, exc)
            return
        self.emitter.offer(data)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        # Every failed call (all of them during a provider outage): ``_emit`` inlined.
        try:
            event = events.failure_event(self, kwargs)
            if event is None:
                self.emitter.count_skipped()
                return
            data = wire.encode_event(event)
        except Exception as exc:
            self._extract_failed(events.failure_event, exc)
            return
        self.emitter.offer(data)

    async def async_post_call_success_hook(self, data: Any, user_api_key_dict: Any, response: Any) -> None:
        """Nothing to do: successful requests are counted from the success event (as LiteLLM does)."""
        return None

    async def async_post_call_failure_hook(
        self,
        request_data: Any,
        original_exception: Any,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        self._emit(events.post_call_failure_event, self, request_data, original_exception, user_api_key_dict)

    async def log_success_fallback_event(
        self, original_model_group: str, kwargs: dict[str, Any], original_exception: Exception
    ) -> None:
        self._emit(events.fallback_event, wire.FALLBACK_SUCCESS, original_model_group, kwargs, original_exception)

    async def log_failure_fallback_event(
        self, original_model_group: str, kwargs: dict[str, Any], original_exception: Exception
    ) -> None:
        self._emit(events.fallback_event, wire.FALLBACK_FAILURE, original_model_group, kwargs, original_exception)

    # -- deployment health (router) ---------------------------------------------------------------

    def set_litellm_deployment_state(
        self, state: int, litellm_model_name: str, model_id: str | None, api_base: str | None, api_provider: str
    ) -> None:
        self._emit_simple(
            wire.DEPLOYMENT_STATE,
            state=state,
            litellm_model_name=litellm_model_name,
            model_id=model_id,
            api_base=api_base,
            api_provider=api_provider,
        )

    def set_deployment_healthy(self, litellm_model_name: str, model_id: str, api_base: str, api_provider: str) -> None:
        self.set_litellm_deployment_state(0, litellm_model_name, model_id, api_base, api_provider)

    def set_deployment_partial_outage(
        self, litellm_model_name: str, model_id: str | None, api_base: str | None, api_provider: str
    ) -> None:
        self.set_litellm_deployment_state(1, litellm_model_name, model_id, api_base, api_provider)

    def set_deployment_complete_outage(
        self, litellm_model_name: str, model_id: str | None, api_base: str | None, api_provider: str
    ) -> None:
        self.set_litellm_deployment_state(2, litellm_model_name, model_id, api_base, api_provider)

    def increment_deployment_cooled_down(
        self, litellm_model_name: str, model_id: str, api_base: str, api_provider: str, exception_status: str
    ) -> None:
        self._emit_simple(
            wire.DEPLOYMENT_COOLED_DOWN,
            litellm_model_name=litellm_model_name,
            model_id=model_id,
            api_base=api_base,
            api_provider=api_provider,
            exception_status=exception_status,
        )

    def track_provider_remaining_budget(self, provider: str, spend: float, budget_limit: float) -> None:
        self._emit_simple(
            wire.PROVIDER_BUDGET,
            api_provider=provider,
            spend=events.finite_or_none(spend),
            budget_limit=events.finite_or_none(budget_limit),
        )

    # -- proxy-side direct calls ------------------------------------------------------------------

    def increment_callback_logging_failure(self, callback_name: str) -> None:
        self._emit_simple(wire.CALLBACK_FAILURE, callback_name=callback_name)

    def _record_guardrail_metrics(
        self, guardrail_name: str, latency_seconds: float, status: str, error_type: str | None, hook_type: str
    ) -> None:
        self._emit_simple(
            wire.GUARDRAIL,
            guardrail_name=guardrail_name,
            latency_seconds=events.finite_or_none(latency_seconds),
            status=status,
            error_type=error_type,
            hook_type=hook_type,
        )

    def set_team_members_metric(self, team: Any) -> None:
        # Arguments are derived inside the build step, so a malformed team is counted, not raised.
        self._emit(
            lambda: events.simple_event(
                wire.TEAM_MEMBERS,
                team=getattr(team, "team_id", None),
                team_alias=getattr(team, "team_alias", None) or "",
                members=len(getattr(team, "members_with_roles", None) or []),
            )
        )

    def set_spend_capture_rate(self, api_provider: str, capture_rate: float | None) -> None:
        def build() -> events.Event:
            # None means "unknown" (LiteLLM exports NaN); it is shipped as an absent value.
            rate = None if capture_rate is None or math.isnan(capture_rate) else capture_rate
            return events.simple_event(wire.SPEND_CAPTURE_RATE, api_provider=api_provider, capture_rate=rate)

        self._emit(build)

    def record_managed_batch_created(
        self,
        model: str | None,
        api_provider: str | None,
        user: str | None,
        user_email: str | None,
        api_key_alias: str | None,
    ) -> None:
        self._emit_simple(
            wire.MANAGED_BATCH_CREATED,
            model=model,
            api_provider=api_provider,
            user=user,
            user_email=user_email,
            api_key_alias=api_key_alias,
        )

    def record_managed_file_created(
        self,
        model: str | None,
        api_provider: str | None,
        user: str | None,
        user_email: str | None,
        api_key_alias: str | None,
    ) -> None:
        self._emit_simple(
            wire.MANAGED_FILE_CREATED,
            model=model,
            api_provider=api_provider,
            user=user,
            user_email=user_email,
            api_key_alias=api_key_alias,
        )

    def record_managed_file_deleted(self, result: str) -> None:
        self._emit_simple(wire.MANAGED_FILE_DELETED, result=result)

    def record_managed_file_size(
        self,
        size_bytes: int,
        purpose: str,
        file_type: str,
        model: str | None = None,
        api_provider: str | None = None,
        user: str | None = None,
    ) -> None:
        self._emit_simple(
            wire.MANAGED_FILE_SIZE,
            size_bytes=size_bytes,
            purpose=purpose,
            file_type=file_type,
            model=model or "",
            api_provider=api_provider or "",
            user=user or "",
        )

    def record_managed_batch_duration(
        self, duration_seconds: float, model: str | None = None, api_provider: str | None = None
    ) -> None:
        self._emit_simple(
            wire.MANAGED_BATCH_DURATION,
            duration_seconds=events.finite_or_none(duration_seconds),
            model=model or "",
            api_provider=api_provider or "",
        )

    def record_check_batch_cost_run(
        self, jobs_polled: int, processed_models: list[tuple[str | None, str | None]] | None = None
    ) -> None:
        self._emit(
            lambda: events.simple_event(
                wire.CHECK_BATCH_COST_RUN,
                jobs_polled=jobs_polled,
                processed=[[m or "", p or ""] for m, p in (processed_models or [])],
            )
        )

    def record_check_batch_cost_error(self, error_type: str) -> None:
        self._emit_simple(wire.CHECK_BATCH_COST_ERROR, error_type=error_type)

    # -- budget cron: owned by the aggregator ------------------------------------------------------

    async def initialize_remaining_budget_metrics(self) -> None:
        """The aggregator refreshes budget gauges from the database under a Redis lease."""
        return None

    @staticmethod
    def initialize_budget_metrics_cron_job(scheduler: Any) -> None:
        """No cron job in the proxy: the aggregator runs it (once, not once per pod)."""
        return None


def _noop_like(original: Any) -> Any:
    """A replacement for a PrometheusLogger method this class does not implement."""
    func = original.__func__ if isinstance(original, (staticmethod, classmethod)) else original
    name = getattr(func, "__name__", "method")

    if inspect.iscoroutinefunction(func):

        async def async_noop(*args: Any, **kwargs: Any) -> None:
            log.debug("litellm-stream-metrics: ignoring PrometheusLogger.%s()", name)
            return None

        replacement: Any = async_noop
    else:

        def noop(*args: Any, **kwargs: Any) -> None:
            log.debug("litellm-stream-metrics: ignoring PrometheusLogger.%s()", name)
            return None

        replacement = noop
    replacement.__name__ = name
    if isinstance(original, staticmethod):
        return staticmethod(replacement)
    if isinstance(original, classmethod):
        return classmethod(replacement)
    return replacement


# Kept from PrometheusLogger: public entry points that only look things up.
_INHERITED_PUBLIC = frozenset({"get_instance"})


def _guard_unimplemented_methods() -> list[str]:
    guarded = []
    for name, value in vars(PrometheusLogger).items():
        if name.startswith("_") or name in vars(StreamMetricsLogger) or name in _INHERITED_PUBLIC:
            continue
        if not callable(value) and not isinstance(value, (staticmethod, classmethod)):
            continue
        base = getattr(CustomLogger, name, None)
        setattr(StreamMetricsLogger, name, base if base is not None else _noop_like(value))
        guarded.append(name)
    return guarded


GUARDED_METHODS = _guard_unimplemented_methods()
