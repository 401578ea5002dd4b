"""Client for a local ClamAV daemon (clamd), with the same surface as ``ScanClient``.

``ClamdClient.scan`` never raises (except ``asyncio.CancelledError``): every failure becomes a
``ScanResult`` without a verdict, marked retryable when it may pass (clamd down, restarting,
timing out), with a short reason that is safe to log.

The document goes with ``zINSTREAM``: chunks each prefixed by its 4-byte big-endian length,
then a zero-length chunk. clamd answers, NUL-terminated, ``stream: OK``, ``stream: <signature>
FOUND`` or ``<message> ERROR``; a stream over its ``StreamMaxLength`` gets ``INSTREAM size limit
exceeded. ERROR`` as soon as a chunk length crosses the limit, and clamd closes the connection.

Raw non-blocking sockets (``loop.sock_*``) rather than asyncio streams: after that early
answer, our next write fails with a broken pipe or a reset, and a stream transport then drops
the connection with the answer still unread, so a document that will never fit would look
like a passing network fault and be retried until the deadline. A raw socket still reads it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
import struct
from collections.abc import AsyncGenerator, Callable
from typing import Any

from .attempts import Attempt, Retrier, ScanResult
from .source import ScanSource, SourceError

__all__ = ["ClamdClient", "ClamdError", "scanner_name"]

logger = logging.getLogger("dd_api.scanning")

_CONNECT_TIMEOUT = 5.0
# PING and VERSION are answered by clamd's receiving thread, without waiting for a scan thread.
_COMMAND_TIMEOUT = 5.0
_RECV_SIZE = 4096
# clamd's answers are one short line; anything longer is not clamd talking.
_MAX_ANSWER = 4096
_LENGTH = struct.Struct(">I")
_END_OF_STREAM = _LENGTH.pack(0)
_SIZE_LIMIT_ANSWER = "INSTREAM size limit exceeded. ERROR"
_OK_ANSWER = "stream: OK"
_FOUND = re.compile(r"stream: (.+) FOUND")
# S3 tag values: at most 256 characters, letters, digits, spaces and + - = . _ : / @.
_TAG_MAX = 256
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9 +\-=._:/@]")
# Text from the socket put in a log or a reason: printable ASCII, bounded.
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_PRINT_MAX = 200


class ClamdError(Exception):
    """clamd answered a command (PING, VERSION) with something else than expected."""


class _ClosedEarly(ConnectionError):
    """clamd closed the connection without a complete answer."""


class _ConnectTimeout(ConnectionError):
    """clamd's socket did not accept the connection in time."""


def _failed(kind: str, reason: str | None = None, *, retryable: bool) -> Attempt:
    return Attempt(failure=kind, detail=reason, retryable=retryable)


class ClamdClient:
    def __init__(
        self,
        address: str,
        *,
        attempt_timeout: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        """``address``: clamd's unix socket path (anything with a ``/``) or ``host:port``."""
        self._address = address
        self._target = _parse_address(address)  # a bad setting fails at start-up, not per scan
        self._attempt_timeout = attempt_timeout
        self._retrier = Retrier(
            label="clamd scan",
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            on_failure=on_failure,  # told each failed attempt's kind, e.g. "clamd ERROR"
        )
        self._version: str | None = None

    def __repr__(self) -> str:
        return f"ClamdClient(address={self._address!r})"

    async def ping(self) -> None:
        """Raise unless clamd answers ``PING`` with ``PONG``."""
        answer = await self._command(b"zPING\0")
        if answer != "PONG":
            raise ClamdError(f"clamd answered PING with {_printable(answer)!r}")

    async def version(self) -> str:
        """clamd's ``VERSION`` answer ("ClamAV 1.4.6[/<db version>/<db date>]"), read once."""
        if self._version is None:
            answer = await self._command(b"zVERSION\0")
            if not answer.startswith("ClamAV "):
                raise ClamdError(f"clamd answered VERSION with {_printable(answer)!r}")
            self._version = answer
        return self._version

    @property
    def scanner_name(self) -> str:
        """The ``av-scanner`` tag value: "clamd ClamAV 1.4.6"; just "clamd" until
        ``version()`` has been read."""
        return scanner_name(self._version)

    async def scan(
        self,
        source: ScanSource,
        *,
        filename: str,
        mimetype: str,
        request_id: str,
        deadline: float,
        retry: bool = True,
    ) -> ScanResult:
        """Scan ``source`` within ``deadline`` seconds, retrying what may pass unless
        ``retry`` is false. ``filename`` and ``mimetype`` are unused: clamd scans bytes only
        and finds the type itself."""
        return await self._retrier.run(
            lambda remaining: self._attempt(source, request_id, remaining),
            deadline=deadline,
            retry=retry,
            request_id=request_id,
        )

    async def _attempt(self, source: ScanSource, request_id: str, remaining: float) -> Attempt:
        budget = min(self._attempt_timeout, remaining)
        chunks = source.chunks()
        try:
            # asyncio.timeout bounds the whole exchange: a slowly trickling source or a stuck
            # clamd cannot outlive the attempt.
            async with asyncio.timeout(budget):
                # Opening the source is what fails when it is unreadable: before clamd is
                # involved, so a missing document costs it nothing.
                first = await anext(chunks, b"")
                with await self._connect() as sock:
                    return await self._exchange(sock, source.size, first, chunks, request_id)
        except TimeoutError:
            if budget < remaining:
                return _failed("clamd timeout", retryable=True)
            return _failed("deadline reached mid-attempt", retryable=True)
        except SourceError as error:
            return _failed(error.reason, retryable=error.retryable)
        except _ClosedEarly:
            return _failed("clamd closed early", retryable=True)
        except _ConnectTimeout:
            return _failed("clamd connect timeout", retryable=True)
        except OSError as exc:  # refused, reset, no socket file, name lookup: clamd down or away
            return _failed(f"clamd {type(exc).__name__}", retryable=True)
        except Exception as exc:  # a bug must not kill the background task
            logger.exception(
                "clamd scan attempt raised unexpectedly", extra={"scan_request_id": request_id}
            )
            return _failed(f"clamd unexpected {type(exc).__name__}", retryable=False)
        finally:
            await chunks.aclose()

    async def _exchange(
        self,
        sock: socket.socket,
        size: int,
        first: bytes,
        chunks: AsyncGenerator[bytes],
        request_id: str,
    ) -> Attempt:
        await asyncio.get_running_loop().sock_sendall(sock, b"zINSTREAM\0")
        try:
            checksum = await _send_document(sock, size, first, chunks)
        except (BrokenPipeError, ConnectionResetError):
            # clamd refuses a stream over its StreamMaxLength with an answer and closes at
            # once, so the refusal surfaces here as a failed write; the answer is still ours
            # to read. Only an ERROR can come before the end of the stream.
            answer = await _salvage_answer(sock)
            if answer is None or not answer.endswith("ERROR"):
                raise
            return _judge(answer, "", request_id)
        return _judge(await _read_answer(sock), checksum, request_id)

    async def _command(self, command: bytes) -> str:
        """Send a one-line command on a connection of its own; clamd's answer."""
        async with asyncio.timeout(_COMMAND_TIMEOUT):
            with await self._connect() as sock:
                await asyncio.get_running_loop().sock_sendall(sock, command)
                return await _read_answer(sock)

    async def _connect(self) -> socket.socket:
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                if isinstance(self._target, str):
                    return await _connect_socket(socket.AF_UNIX, self._target)
                return await _connect_tcp(*self._target)
        except TimeoutError:
            # Told apart from the attempt's own timeout, which is raised outside this block.
            raise _ConnectTimeout from None


def scanner_name(version: str | None) -> str:
    """The ``av-scanner`` tag value for a clamd that answered ``VERSION`` with ``version``.

    Only the engine part ("ClamAV 1.4.6"): the database part ("/27512/<date>") changes with
    every signature reload, while the version is read once, so it would soon be wrong. Limited
    to the characters and length S3 allows in a tag value.
    """
    name = "clamd"
    if version:
        name = f"{name} {version.split('/', 1)[0]}"
    name = _TAG_UNSAFE.sub("_", " ".join(name.split()))
    return name[:_TAG_MAX]


async def _send_document(
    sock: socket.socket, size: int, first: bytes, chunks: AsyncGenerator[bytes]
) -> str:
    """Send the document as INSTREAM chunks, then the end mark; the SHA-256 hex of what went.

    The bytes are hashed off the event loop (a 10 MiB digest would hold it about 25 ms) and
    counted: a source that is not the size it declared fails as a source, before the end mark,
    so clamd never gives a verdict on other bytes than the stored ones.
    """
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    sent = 0
    chunk = first
    while chunk:
        sent += len(chunk)
        if sent > size:
            break
        await asyncio.to_thread(digest.update, chunk)
        await loop.sock_sendall(sock, _LENGTH.pack(len(chunk)))
        await loop.sock_sendall(sock, chunk)
        chunk = await anext(chunks, b"")
    if sent != size:
        raise SourceError("document is not the size it was stored with", retryable=False)
    await loop.sock_sendall(sock, _END_OF_STREAM)
    return digest.hexdigest()


async def _read_answer(sock: socket.socket) -> str:
    """clamd's NUL-terminated answer, without the NUL (cut short if it runs on)."""
    loop = asyncio.get_running_loop()
    answer = b""
    while b"\0" not in answer and len(answer) <= _MAX_ANSWER:
        data = await loop.sock_recv(sock, _RECV_SIZE)
        if not data:
            raise _ClosedEarly
        answer += data
    return answer.partition(b"\0")[0].decode("utf-8", "replace")


async def _salvage_answer(sock: socket.socket) -> str | None:
    """An answer clamd sent before closing, if one can still be read."""
    try:
        return await _read_answer(sock)
    except OSError:
        return None


def _judge(answer: str, checksum: str, request_id: str) -> Attempt:
    if answer == _OK_ANSWER:
        return Attempt(verdict="clean", checksum=checksum)
    if found := _FOUND.fullmatch(answer):
        # The signature name comes from the database, never from the document.
        logger.warning(
            "clamd found %s in the document of scan request %s",
            _printable(found[1]),
            request_id,
            extra={"scan_request_id": request_id, "scan_signature": _printable(found[1])},
        )
        return Attempt(verdict="malicious", checksum=checksum)
    if answer == _SIZE_LIMIT_ANSWER:
        return _failed(
            "clamd StreamMaxLength", "document over clamd's StreamMaxLength", retryable=False
        )
    if answer.endswith("ERROR"):
        # libclamav's own messages (out of memory, temporary file unwritable, ...).
        detail = _printable(answer.removesuffix("ERROR").strip())
        return _failed("clamd ERROR", f"clamd ERROR: {detail}", retryable=False)
    return _failed("clamd unexpected answer", retryable=True)


async def _connect_tcp(host: str, port: int) -> socket.socket:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, _, _, _, address in infos:
        try:
            return await _connect_socket(family, address)
        except OSError as exc:
            error = exc
    raise error


async def _connect_socket(family: int, address: str | tuple[Any, ...]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def _parse_address(address: str) -> str | tuple[str, int]:
    """A unix socket path (kept as is) or (host, port) from "host:port" / "[v6]:port"."""
    if "/" in address:
        return address
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"clamd address must be a socket path or host:port, not {address!r}")
    return host, int(port)


def _printable(text: str) -> str:
    return _UNPRINTABLE.sub("?", text)[:_PRINT_MAX]
