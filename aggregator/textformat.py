"""Prometheus text (0.0.4) and OpenMetrics (1.0.0) formatting, byte for byte as prometheus_client.

prometheus_client (0.26) is the reference: every helper here reproduces the text its
``generate_latest`` / ``openmetrics.exposition.generate_latest`` writes for the same sample, so the
business series rendered by :mod:`aggregator.exposition` and the process-local self-metrics rendered
by prometheus_client itself can be concatenated into one response.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final, Literal

Format = Literal["text", "openmetrics"]

#: What prometheus_client answers for the text format (``CONTENT_TYPE_PLAIN_0_0_4``).
CONTENT_TYPE_TEXT: Final[str] = "text/plain; version=0.0.4; charset=utf-8"
#: What prometheus_client answers for OpenMetrics without a version parameter
#: (``openmetrics.exposition.CONTENT_TYPE_LATEST``).
CONTENT_TYPE_OPENMETRICS: Final[str] = "application/openmetrics-text; version=1.0.0; charset=utf-8"
#: The last line of an OpenMetrics exposition: append it once, after every part of the body.
EOF: Final[bytes] = b"# EOF\n"

_INF = math.inf


def go_float(value: float) -> str:
    """prometheus_client's ``utils.floatToGoString``: ``repr``, except ``+Inf``/``-Inf``/``NaN`` and
    positive numbers of 7+ integer digits in Go's exponent form (``1234567.0`` -> ``1.234567e+06``)."""
    if value == _INF:
        return "+Inf"
    if value == -_INF:
        return "-Inf"
    if value != value:
        return "NaN"
    s = repr(value)
    dot = s.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def escape_label_value(value: str) -> str:
    """Label value escaping of both formats: backslash, newline and double quote."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def help_text(documentation: str, fmt: Format) -> str:
    """HELP escaping: the text format escapes backslash and newline; OpenMetrics also ``"``."""
    escaped = documentation.replace("\\", "\\\\").replace("\n", "\\n")
    if fmt == "openmetrics":
        escaped = escaped.replace('"', '\\"')
    return escaped


def family_header(family: str, kind: str, documentation: str, fmt: Format) -> bytes:
    """``# HELP``/``# TYPE`` lines of a family. In the text format a counter's metadata is named
    after its sample (``x_total``); OpenMetrics names the family (``x``)."""
    name = f"{family}_total" if kind == "counter" and fmt == "text" else family
    return f"# HELP {name} {help_text(documentation, fmt)}\n# TYPE {name} {kind}\n".encode()


def _version(tokens: list[str]) -> str:
    for tok in tokens:
        key, sep, value = tok.strip().partition("=")
        if sep and key == "version":
            return value
    return ""


def _escaping(tokens: list[str]) -> str:
    for tok in tokens:
        key, sep, value = tok.strip().partition("=")
        if sep and key == "escaping" and value in ("allow-utf-8", "underscores", "values"):
            return value
    # prometheus_client also honours "dots", which rewrites every "_" of a name as "__"; we
    # answer "underscores" instead (our names and label names are legacy-valid, so they are
    # written unchanged, and the header tells the client which scheme was applied).
    return "underscores"


def _version_at_least_1(version: str) -> bool:
    parts: list[int | str] = []
    for p in version.split("."):
        try:
            parts.append(int(p))
        except ValueError:
            parts.append(p)
    try:
        return tuple(parts) >= (1, 0, 0)  # type: ignore[operator]
    except TypeError:
        return False


def choose_format(accept_header: str | None) -> tuple[Format, str]:
    """The format and Content-Type for an ``Accept`` header, like prometheus_client's
    ``choose_encoder``: the first ``application/openmetrics-text`` (any version >= 1.0.0, or none)
    or ``text/plain; version>=1.0.0`` entry wins, in header order (q-values are ignored, as there);
    anything else gets the 0.0.4 text format. Differences: an OpenMetrics version above 1.0.0 is
    answered as 1.0.0 (the version we write), and ``escaping=dots`` as ``underscores``."""
    for accepted in (accept_header or "").split(","):
        tokens = accepted.split(";")
        media = tokens[0].strip()
        if media == "application/openmetrics-text":
            version = _version(tokens)
            if not version:
                return "openmetrics", CONTENT_TYPE_OPENMETRICS
            if _version_at_least_1(version):
                # prometheus_client echoes the requested version; we write OpenMetrics 1.0.0
                # whatever was asked for, and say so.
                return "openmetrics", f"{CONTENT_TYPE_OPENMETRICS}; escaping={_escaping(tokens)}"
        elif media == "text/plain":
            version = _version(tokens)
            if version and _version_at_least_1(version):
                return "text", f"text/plain; version=1.0.0; charset=utf-8; escaping={_escaping(tokens)}"
    return "text", CONTENT_TYPE_TEXT


def render_registry(registry: Any, fmt: Format, names: Iterable[str] | None = None) -> bytes:
    """A prometheus_client registry (process-local self-metrics) in ``fmt``, restricted to
    ``names`` like prometheus_client's ``name[]``; OpenMetrics *without* the final ``# EOF`` line,
    so the caller can concatenate it with other parts and append :data:`EOF` once."""
    from prometheus_client import exposition
    from prometheus_client.openmetrics import exposition as om

    source = registry if names is None else registry.restricted_registry(list(names))
    if fmt == "text":
        return bytes(exposition.generate_latest(source))
    body = bytes(om.generate_latest(source))
    if body.endswith(EOF):
        body = body[: -len(EOF)]
    return body
