"""Redis URLs without their secrets: every URL that reaches a log line, an error or a metric goes through `redact`.

A URL carries its password (redis://:secret@host:port/db, or ?password=secret); the redacted form keeps what helps
a reader find the server (scheme, host, port, db) and replaces the user and password by '***'.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

REDACTED = "***"
# any redis[s]:// or unix:// URL inside free text (an exception's message, a log line)
_URL_IN_TEXT = re.compile(r"\b(?:rediss?|unix)://[^\s'\"<>]+")
_SECRET_QUERY_KEYS = {"password", "username"}


def redact(url: str | None) -> str:
    """`url` with its user and password replaced by '***' (also a password in the query string)."""
    if not url:
        return str(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL we can parse: show only the scheme rather than risk the secret
        return url.split("://", 1)[0] + "://" + REDACTED if "://" in url else REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = [(k, REDACTED if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in parse_qsl(query, True)]
        query = urlencode(pairs, safe="*")
    # by hand, not urlunsplit: that drops the '//' of unix:///path
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "") \
        + (f"#{parts.fragment}" if parts.fragment else "")


def redact_text(text: str) -> str:
    """Every Redis URL inside `text` redacted (for messages that quote a URL we did not format ourselves)."""
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)
