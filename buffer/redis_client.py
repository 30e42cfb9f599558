"""The Redis client every buffer part uses: bounded waits, retries with backoff, and one error family.

Every call has a socket timeout (`buffer.redis_timeout_s`); a connection error or timeout is retried with
exponential backoff (a server restarting from its AOF, a network blip), then surfaces as BufferUnavailable naming
the URL (redacted: buffer/urls.py), the operation and the fix, whatever redis-py raised (ConnectionError,
TimeoutError, BusyLoadingError...). A ResponseError is an answer, not an outage: it passes through for the caller to
read.
"""
from __future__ import annotations

import functools

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from buffer.errors import BufferUnavailable
from buffer.urls import redact, redact_text

# with backoff 0.05, 0.1, ... 1.6 s (capped at 2 s): about 3 s of waiting before giving up, long enough for the
# driver's watchdog to restart an embedded server that died (buffer/server.py)
RETRIES = 6


def make_client(url: str, timeout_s: float) -> redis.Redis:
    # the longest blocking read (XREADGROUP BLOCK) is 1 s: the socket timeout must exceed it
    return redis.Redis.from_url(url, socket_connect_timeout=min(5.0, timeout_s), socket_timeout=max(timeout_s, 1.5),
                                retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), RETRIES),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
                                health_check_interval=30)


def unavailable(url: str, what: str, error: Exception) -> BufferUnavailable:
    return BufferUnavailable(f"Redis at {redact(url)} did not answer {what} ({type(error).__name__}: "
                             f"{redact_text(str(error))}) after "
                             f"{RETRIES} retries: check that the server runs and is reachable (buffer.redis_url), or "
                             f"raise buffer.redis_timeout_s for a slow one")


def redis_errors(method):
    """Methods of an object with `.url`: every Redis failure but an answer becomes BufferUnavailable."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except redis.ResponseError:
            raise
        except redis.RedisError as e:
            raise unavailable(self.url, method.__name__, e) from e

    return wrapped
