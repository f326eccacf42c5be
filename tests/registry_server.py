"""Start the real CNCF distribution registry (Debian's ``docker-registry``) on a loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY_BINARY = "docker-registry"

_CONFIG = """\
version: 0.1
log:
  level: {log_level}
  accesslog:
    disabled: {no_access_log}
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
  redirect:
    disable: true
http:
  addr: {host}:{port}
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class RegistryServer:
    """A running registry: ``address`` is ``host:port``; ``root`` its storage directory."""

    host: str
    port: int
    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_registry(
    workdir: Path | None = None,
    host: str = "127.0.0.1",
    quiet: bool = True,
    extra_config: str = "",
) -> RegistryServer:
    """Start ``docker-registry serve`` with a generated config and wait until ``/v2/`` answers
    (200, or 401 when ``extra_config`` adds an ``auth:`` section)."""
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise RuntimeError(
            f"{REGISTRY_BINARY} not found on PATH (Debian package docker-registry); "
            "the test command installs it"
        )
    base = Path(workdir or tempfile.mkdtemp(prefix="ociflow-registry-"))
    root = base / "storage"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    config = base / "config.yml"
    config.write_text(
        _CONFIG.format(
            root=root,
            host=host,
            port=port,
            log_level="error" if quiet else "info",
            no_access_log="true" if quiet else "false",
        )
        + extra_config
    )
    log_path = base / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        )
    server = RegistryServer(host, port, root, process, log_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"registry exited at start: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/", timeout=1) as response:
                if response.status == 200:
                    return server
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"registry did not answer on {server.address}")
