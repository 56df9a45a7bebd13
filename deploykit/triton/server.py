"""Start a real `tritonserver` on loopback: the binary the nvidia-pytriton wheel ships, driven directly.

PyTriton's own Python wrapper is not used (it failed here on Python 3.11 with a `_thread.RLock`
error); its wheel carries Triton 2.51 with the Python backend, which is all this needs. The wheel
pins numpy<2, so it usually lives in its own environment (`make triton-env`); `python` is that
environment's interpreter, which also runs the Python-backend models and must have deploykit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from ..errors import BackendUnavailableError

PROBE = ("import os, sys, pytriton, deploykit, onnxruntime; print(os.path.dirname(pytriton.__file__)); "
         "print(f'{sys.version_info[0]}.{sys.version_info[1]}')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonServer:
    """`with TritonServer([repo, ...], python) as server:` a ready tritonserver at server.url (HTTP, 127.0.0.1)."""

    def __init__(
        self, repositories: list[str | os.PathLike[str]], python: str | os.PathLike[str], timeout_s: float = 180
    ) -> None:
        self.repositories = [Path(r).resolve() for r in repositories]
        self.python = Path(python)
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.url = ""

    def _locate(self) -> tuple[Path, str]:
        """(pytriton package dir, Python version) of the environment, or a clear error."""
        if not self.python.is_file():
            raise BackendUnavailableError(f"Triton's Python {self.python} does not exist; create it with `make triton-env`.")
        probe = subprocess.run([str(self.python), "-c", PROBE], capture_output=True, text=True, timeout=120, check=False)
        if probe.returncode:
            raise BackendUnavailableError(
                f"{self.python} cannot import pytriton, deploykit and onnxruntime ({probe.stderr.strip().splitlines()[-1]}); "
                "`make triton-env` installs nvidia-pytriton, tritonclient and deploykit there."
            )
        package, version = probe.stdout.split()
        return Path(package), version

    def __enter__(self) -> TritonServer:
        package, version = self._locate()
        self.workdir = Path(tempfile.mkdtemp(prefix="deploykit-triton-"))
        server = self.workdir / "tritonserver"
        shutil.copytree(package / "tritonserver", server, ignore=shutil.ignore_patterns("python_backend_stubs"))
        stub = package / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise BackendUnavailableError(f"this nvidia-pytriton has no Python backend stub for Python {version}.")
        shutil.copy2(stub, server / "backends" / "python" / "triton_python_backend_stub")
        http = _free_port()
        env = dict(os.environ)
        libs = str(package.parent / "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libs, env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join([str(self.python.parent), env.get("PATH", "")])  # the stub's Python
        self.log = self.workdir / "tritonserver.log"
        command = [
            str(server / "bin" / "tritonserver"), *(f"--model-repository={r}" for r in self.repositories),
            "--backend-directory", str(server / "backends"), "--cache-directory", str(server / "caches"),
            "--http-address", "127.0.0.1", "--http-port", str(http),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(_free_port()),
            "--allow-metrics", "false", "--exit-on-error", "true", "--strict-readiness", "true",
        ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"127.0.0.1:{http}"
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BackendUnavailableError(f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise BackendUnavailableError(f"tritonserver was not ready after {self.timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
