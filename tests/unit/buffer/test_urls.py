"""Redis URLs lose their password before they reach a log line, an error or a metric."""
from __future__ import annotations

import pytest

from buffer.api import redact, redact_text


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@10.0.0.1:6379/0", "redis://***@10.0.0.1:6379/0"),
    ("redis://alice:s3cret@cache.internal:6380/2", "redis://***@cache.internal:6380/2"),
    ("rediss://h:6379/0?password=s3cret&ssl_cert_reqs=none", "rediss://h:6379/0?password=***&ssl_cert_reqs=none"),
    ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # nothing secret: unchanged
])
def test_redact_keeps_where_the_server_is_and_drops_the_secret(url, shown):
    assert redact(url) == shown
    assert "s3cret" not in redact(url)


def test_redact_text_finds_every_url_inside_a_message():
    text = "Error connecting to redis://:s3cret@h:1/0; also tried 'rediss://u:s3cret@g:2/1'"
    out = redact_text(text)
    assert "s3cret" not in out
    assert "redis://***@h:1/0" in out and "rediss://***@g:2/1" in out
