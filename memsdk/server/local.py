"""memsdk's servers started as local subprocesses and reached as an outside client reaches them:
``memsdk serve`` on a free loopback port (:class:`LocalServer`), and ``memsdk mcp`` over stdio
through the mcp SDK's own client (:func:`mcp_stdio_client`, :func:`tool_result`). The tests, the
benchmarks and the examples start them this way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from types import TracebackType
from typing import IO, Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import CallToolResult

from memsdk.errors import MemsdkError

__all__ = ["LocalServer", "mcp_stdio_client", "tool_result"]

# The memsdk command line of this interpreter; -P keeps the working directory off sys.path.
_CLI = [sys.executable, "-P", "-m", "memsdk.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``memsdk serve --memory MEMORY ARGS...`` as a subprocess on a free port of 127.0.0.1,
    returned once it answers ``/healthz``. Use it as a context manager, or call :meth:`close`.

    Args:
        memory: the memory directory.
        args: more ``memsdk serve`` options (``--allow-path DIR``, ``--max-body-bytes N``).
        log: a file that takes the server's output (read it with :meth:`output`); None
            discards it.
        start_timeout_s: how long to wait for ``/healthz``.
        stop_timeout_s: how long :meth:`stop` waits for the server to shut down.

    Raises:
        MemsdkError: the server ended, or did not answer within ``start_timeout_s``.
    """

    def __init__(
        self,
        memory: str | os.PathLike[str],
        *args: str,
        log: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 120.0,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop_timeout_s = stop_timeout_s
        self._log: IO[bytes] | None = open(log, "w+b") if log is not None else None  # noqa: SIM115
        self.process = subprocess.Popen(
            [*_CLI, "serve", "--memory", str(memory), "--port", str(self.port), *args],
            stdout=self._log if self._log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_healthy(start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _wait_healthy(self, timeout_s: float) -> None:
        # Loopback: no proxy from the environment stands between.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MemsdkError(
                    f"memsdk serve ended with exit code {self.process.returncode} before it "
                    f"answered /healthz: {self.output() or 'its output was not kept (log=None)'}"
                )
            try:
                with opener.open(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:  # not listening yet
                pass
            time.sleep(0.2)
        raise MemsdkError(
            f"memsdk serve did not answer {self.url}/healthz within {timeout_s:.0f} s: "
            f"{self.output() or 'its output was not kept (log=None)'}"
        )

    def output(self) -> str:
        """What the server wrote so far ("" when its output is discarded)."""
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> int:
        """Ask the server to shut down (SIGTERM: it drains, flushes and closes the memory) and
        wait for it; returns its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=self.stop_timeout_s)

    def close(self) -> None:
        """Stop the server if it still runs, and close its log."""
        try:
            if self.process.poll() is None:
                self.stop()
        finally:
            if self._log is not None:
                self._log.close()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def mcp_stdio_client(memory: str | os.PathLike[str], *args: str) -> Client:
    """The mcp SDK's client of ``memsdk mcp --memory MEMORY ARGS...`` (``--tenant``,
    ``--allow-path`` ...), run as a subprocess over stdio; enter it with ``async with``."""
    command = [*_CLI, "mcp", "--memory", os.fspath(memory), *args]
    return Client(StdioServerParameters(command=command[0], args=command[1:]))


def tool_result(call: CallToolResult) -> Any:
    """A tool call's structured result (a list comes wrapped as ``{"result": [...]}``).

    Raises:
        MemsdkError: the tool answered with an error (its message is kept).
    """
    if call.is_error:
        text = call.content[0].text if call.content else "no message"
        raise MemsdkError(f"the MCP tool answered with an error: {text}")
    data = call.structured_content
    return data["result"] if set(data) == {"result"} else data
