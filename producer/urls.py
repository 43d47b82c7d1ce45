"""Credentials out of what is printed: every log line, error message or HTTP body that shows a
URL (``LSM_REDIS_URL``, ``LSM_DATABASE_URL``, ``LSM_LITELLM_API_BASE``) goes through
``safe_url``. The producer and the aggregator both use it (the aggregator imports it from here).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"
# Shorter secrets in ``hide`` are not searched for in free text (a one-letter password would
# mask every such letter); the structural masks still apply to them.
MIN_HIDDEN = 4

# A parameter whose name says it holds a secret: ``password=``, ``sslpassword=``, ``passwd=``,
# ``auth_token=``, ``secret=``... in a URL's query or in a libpq ``key=value`` string. Its value
# runs to the next separator, or is quoted (libpq).
_SECRET_PARAM = re.compile(
    r"(?i)(?P<name>(?:^|(?<=[?&;,\s(\[{'\"]))[\w.-]*(?:pass|pwd|secret|token)[\w.-]*\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^&;\s#'\",)\]}]+)"
)
_TOKEN = re.compile(r"\S+")


def _password_span(token: str) -> tuple[int, int] | None:
    """Where the password of ``scheme://user:password@host...`` is; also without a valid scheme
    (``redis:/u:p@h``, ``u:p@h``). It may hold ``@``, ``/``, ``:`` unencoded: it runs from the
    first ``:`` of the user info to the token's last ``@``. None without one (a user name alone
    is no secret)."""
    at = token.rfind("@")
    if at < 0:
        return None
    start = token.find("://")
    start = 0 if start < 0 else start + 3
    colon = token.find(":", start, at)
    return None if colon < 0 else (colon + 1, at)


def _mask_userinfo(token: str) -> str:
    span = _password_span(token)
    return token if span is None else f"{token[: span[0]]}{MASK}{token[span[1] :]}"


def passwords_in(url: str) -> list[str]:
    """The secrets a URL carries (its user info's password, password-like parameters), as
    written and percent-decoded: for ``safe_url(message, hide=...)`` when a library quotes a
    piece of the URL out of context (libpq: ``invalid percent-encoded token: "..."``)."""
    found: list[str] = []
    for m in _SECRET_PARAM.finditer(url):
        found.append(m["value"].strip("'\""))
    span = _password_span(url)  # the whole URL as one token: a password may hold a raw space
    if span is not None:
        found.append(url[span[0] : span[1]])
    out: list[str] = []
    for secret in found:
        for form in (secret, unquote(secret)):
            if form and form not in out:
                out.append(form)
    return sorted(out, key=len, reverse=True)  # longest first: no partial masks


def safe_url(text: str, hide: Iterable[str] = ()) -> str:
    """``text`` (a URL, a malformed one, or a message that contains URLs) with every password
    masked: ``user:password@`` becomes ``user:***@`` and password-like parameters
    (``?password=``, ``&sslpassword=``, libpq ``password='...'``) show ``***``. User names,
    hosts, ports, paths and other parameters stay, so the message still says where. Each of
    ``hide`` (e.g. ``passwords_in(url)``, for a URL the caller knows) is masked wherever it
    appears, too."""
    if not text:
        return text
    text = _SECRET_PARAM.sub(lambda m: m["name"] + MASK, text)
    if "@" in text:
        text = _TOKEN.sub(lambda m: _mask_userinfo(m[0]), text)
    for secret in hide:
        if len(secret) >= MIN_HIDDEN:
            text = text.replace(secret, MASK)
    return text
