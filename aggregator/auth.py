"""Credentials for ``/metrics``: a bearer token and/or HTTP basic auth, compared in constant time."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging

from aggregator.settings import AggregatorConfigError, AggregatorSettings

log = logging.getLogger("litellm_stream_metrics.aggregator")


class MetricsAuth:
    """Decides whether a request's ``Authorization`` header may read ``/metrics``."""

    def __init__(self, settings: AggregatorSettings) -> None:
        token = settings.metrics_bearer_token
        password = settings.metrics_basic_auth_password
        self._token = token.get_secret_value().encode() if token else None
        self._basic = (
            f"{settings.metrics_basic_auth_username}:{password.get_secret_value()}".encode()
            if settings.metrics_basic_auth_username is not None and password is not None
            else None
        )
        self.open = self._token is None and self._basic is None
        if self.open and not settings.metrics_allow_unauthenticated:
            raise AggregatorConfigError(
                "/metrics needs credentials: set LSM_METRICS_BEARER_TOKEN and/or "
                "LSM_METRICS_BASIC_AUTH_USERNAME + LSM_METRICS_BASIC_AUTH_PASSWORD, or set "
                "LSM_METRICS_ALLOW_UNAUTHENTICATED=true to serve it to anyone who can reach the port"
            )
        if self.open:
            log.warning("/metrics is served WITHOUT authentication (metrics_allow_unauthenticated is set)")

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` header of a 401 reply."""
        schemes = []
        if self._token is not None:
            schemes.append('Bearer realm="metrics"')
        if self._basic is not None:
            schemes.append('Basic realm="metrics", charset="UTF-8"')
        return ", ".join(schemes)

    def allows(self, authorization: str | None) -> bool:
        if self.open:
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        scheme = scheme.lower()
        if scheme == "bearer" and self._token is not None:
            return hmac.compare_digest(credentials.encode(), self._token)
        if scheme == "basic" and self._basic is not None:
            try:
                decoded = base64.b64decode(credentials.encode(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded, self._basic)
        return False
