"""A real clamd for the tests: its own configuration, database, unix socket and loopback port.

These machines cannot download ClamAV's databases (no freshclam), clamd refuses to start
without one, and it has no EICAR detection of its own (the official one is a hash signature in
daily.cvd, which only matches a bare EICAR file). So the database is built here: one body
signature, ``DD.Test.EICAR-Anywhere``, over the EICAR string with target type 0 (any file)
and offset ``*`` (anywhere), so that EICAR in the middle of a PDF is found as well as a bare
EICAR file. clamd reports it as ``SIGNATURE`` (it adds ``.UNOFFICIAL`` to names outside its
official databases).

Usage::

    with running_clamd() as daemon:
        client = ClamdClient(daemon.unix_address)  # or daemon.tcp_address

or the session-scoped pytest fixture ``clamd`` (import it into a test module:
``from tests.support.clamd import clamd``). Both fail, without skipping, when clamd is not
installed (CI installs it: ``apt-get install clamav-daemon``).

``ClamdDaemon``:

* ``unix_address`` (the socket path), ``tcp_address`` ("127.0.0.1:<port>"): what
  ``ClamdClient`` takes; both stay the same across restarts.
* ``stream_max_length``: clamd's StreamMaxLength in bytes (1 MiB): a stream of exactly this
  many bytes is scanned, one more is refused.
* ``stop()`` (SIGTERM, then SIGKILL), ``start(timeout)`` (returns once clamd answers PING on
  both sockets; both are no-ops when already in that state), ``stopped()``: a context manager
  that stops clamd and starts it again on exit, ``running``: whether the process is alive.
* ``log()``: clamd's log file so far (it logs every FOUND).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "EICAR",
    "SIGNATURE",
    "STREAM_MAX_LENGTH",
    "ClamdDaemon",
    "ClamdMissing",
    "clamd",
    "running_clamd",
]

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE_NAME = "DD.Test.EICAR-Anywhere"
SIGNATURE = f"{SIGNATURE_NAME}.UNOFFICIAL"
STREAM_MAX_LENGTH = 1024 * 1024
# With this one-signature database clamd answers within a second; the official databases
# take tens of seconds, which this leaves room for.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
INSTALL_HINT = "apt-get install clamav-daemon"


class ClamdMissing(RuntimeError):
    """No clamd executable on this machine."""


def clamd_binary() -> str:
    """clamd's path; it lives in /usr/sbin, which a non-root PATH may lack."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    binary = shutil.which("clamd", path=path)
    if binary is None:
        raise ClamdMissing(
            f"clamd is not installed: the clamd tests need a real ClamAV daemon ({INSTALL_HINT})"
        )
    return binary


class ClamdDaemon:
    def __init__(self, directory: Path, *, binary: str) -> None:
        self.directory = directory
        self.binary = binary
        self.socket_path = directory / "clamd.sock"
        self.port = _free_port()
        self.unix_address = str(self.socket_path)
        self.tcp_address = f"127.0.0.1:{self.port}"
        self.stream_max_length = STREAM_MAX_LENGTH
        self.log_path = directory / "clamd.log"
        self.config_path = directory / "clamd.conf"
        self._output_path = directory / "clamd.out"
        self._process: subprocess.Popen[bytes] | None = None
        _write_database(directory / "db")
        (directory / "tmp").mkdir()
        self.config_path.write_text(self._config())

    def _config(self) -> str:
        # No "User": clamd would switch to that user and lose access to this private (0700)
        # directory; it runs as whoever runs the tests (root included), so
        # AllowSupplementaryGroups, which only matters with User, is not needed either.
        return "\n".join(
            [
                "Foreground yes",
                f"LocalSocket {self.socket_path}",
                "LocalSocketMode 600",
                f"TCPSocket {self.port}",
                "TCPAddr 127.0.0.1",
                f"DatabaseDirectory {self.directory / 'db'}",
                f"TemporaryDirectory {self.directory / 'tmp'}",
                f"StreamMaxLength {self.stream_max_length // 1024}K",
                f"LogFile {self.log_path}",
                "LogTime yes",
                "MaxThreads 4",
                # Nothing to update: skip the periodic database check.
                "SelfCheck 0",
                "",
            ]
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start clamd (if it is not running) and wait until it answers PING on both sockets.

        After a SIGKILL the stale socket file remains; clamd removes it on start.
        """
        if self.running:
            return
        with self._output_path.open("ab") as output:
            self._process = subprocess.Popen(
                [self.binary, "--config-file", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(timeout)

    def stop(self) -> None:
        """Stop clamd: SIGTERM (clamd then removes its socket file), SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """clamd down for the block, up again (same sockets) after it, even if it fails."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"clamd exited during start-up:\n{self._diagnostics()}")
            if self._answers_ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"clamd did not answer PING within {timeout} s:\n{self._diagnostics()}")

    def _answers_ping(self) -> bool:
        return _ping(socket.AF_UNIX, str(self.socket_path)) and _ping(
            socket.AF_INET, ("127.0.0.1", self.port)
        )

    def _diagnostics(self) -> str:
        output = self._output_path.read_text(errors="replace") if self._output_path.exists() else ""
        return f"{output[-2000:]}\n--- {self.log_path}:\n{self.log()[-2000:]}"


@contextlib.contextmanager
def running_clamd(timeout: float = START_TIMEOUT) -> Iterator[ClamdDaemon]:
    """A started clamd in a fresh temporary directory, stopped and removed on exit."""
    binary = clamd_binary()
    # Under /tmp rather than pytest's tmp_path: a unix socket path is limited to 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="dd-clamd-"))
    try:
        daemon = ClamdDaemon(directory, binary=binary)
        try:
            daemon.start(timeout)
            yield daemon
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def clamd() -> Iterator[ClamdDaemon]:
    """A real clamd for the whole session (tests that stop it use ``stopped()``)."""
    missing = None
    try:
        clamd_binary()
    except ClamdMissing as error:
        missing = str(error)
    if missing is not None:  # failed outside the except: no chained traceback to read through
        pytest.fail(missing, pytrace=False)
    with running_clamd() as daemon:
        yield daemon


def _write_database(directory: Path) -> None:
    # .ndb: Name:TargetType:Offset:HexSignature. Target type 0 is any file, offset * anywhere:
    # an offset of 0 would match a bare EICAR file only, not EICAR inside a PDF.
    directory.mkdir()
    (directory / "dd-test.ndb").write_text(f"{SIGNATURE_NAME}:0:*:{EICAR.hex()}\n")


def _ping(family: int, address: str | tuple[str, int]) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(address)
            sock.sendall(b"zPING\0")
            return sock.recv(16) == b"PONG\0"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
