"""The ``matched`` Celery peer's own ``redis-server``: a child process of the bench."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


class RedisServer:
    """A ``redis-server`` child of this process: a free 127.0.0.1 port, append-only file
    fsynced every second, no RDB snapshots, its data in a fresh directory (removed on stop)."""

    def __init__(self, parent_dir: Path, log_path: Path) -> None:
        self.parent_dir = parent_dir
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.url = ""

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        self.parent_dir.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="celery-matched-redis-", dir=self.parent_dir))
        for _attempt in range(3):  # the free port may be taken before redis binds it
            port = _free_port()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        binary,
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "everysec",
                        "--save",
                        "",
                        "--dir",
                        str(self.dir),
                        "--daemonize",
                        "no",
                    ],
                    cwd=self.dir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a ^C reaches the bench, which stops us in order
                )
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                deadline = time.monotonic() + 10
                while self.process.poll() is None and time.monotonic() < deadline:
                    try:
                        client.ping()
                        self.url = f"redis://127.0.0.1:{port}/0"
                        return self.url
                    except redis.ConnectionError:
                        time.sleep(0.05)
            finally:
                client.close()
            self._kill()
        self.stop()
        raise RuntimeError(f"redis-server did not start; see {self.log_path}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _kill(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def stop(self) -> None:
        try:
            self._kill()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
