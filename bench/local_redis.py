"""A throwaway redis-server on a free loopback port for the benchmarks (no persistence)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time


def start_redis() -> tuple[subprocess.Popen, int]:
    """(the server's process, its port); exits naming the package when redis-server is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install it (apt-get install redis-server) or pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", tempfile.mkdtemp()], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port
