"""ClamdClient against a real clamd (tests/support/clamd.py), over its unix socket and TCP.

A few failure shapes clamd cannot be made to produce on demand (an ERROR other than the size
limit, closing without an answer, never answering) use a small stand-in socket server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dd_api.scanning.clamd import ClamdClient, ClamdError, scanner_name
from dd_api.scanning.client import ScanResult
from dd_api.scanning.source import BytesSource, FileSource, ScanSource
from tests.support import clamd as clamd_support
from tests.support.clamd import EICAR, SIGNATURE, ClamdDaemon

clamd = clamd_support.clamd  # the session fixture, as a conftest would re-export it

FAST = {"backoff_base": 0.01, "backoff_max": 0.05}
REQUEST_ID = "req-clamd-1"
# Never to appear in a log: it stands for the document's content.
MARKER = b"MARKER-c0ntent-7f3a9e"
CHUNK = 256 * 1024  # the sources' chunk size


def pdf(body: bytes = b"", *, before: int = 1000, after: int = 1000) -> bytes:
    """A small PDF whose page content has ``body`` between ``before`` and ``after`` bytes of
    comment padding."""
    content = b"BT /F1 12 Tf 72 720 Td (" + MARKER + b") Tj ET\n"
    content += b"%" + b"a" * before + b"\n" + body + b"\n%" + b"z" * after + b"\n"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"endstream",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out


def pdf_with(body: bytes, *, at: int, after: int) -> bytes:
    """A PDF with ``body`` starting at byte ``at`` (the padding is adjusted until it does)."""
    before = at
    for _ in range(3):  # the padding moves the body and the digits of /Length
        document = pdf(body, before=before, after=after)
        before += at - document.index(body)
    assert document.index(body) == at
    return document


CLEAN_PDF = pdf()
# EICAR astride the first chunk boundary of a 600 KB PDF: found anywhere in a stream, even
# split across two INSTREAM chunks.
EICAR_PDF = pdf_with(EICAR, at=CHUNK - len(EICAR) // 2, after=300_000)


@pytest.fixture
def daemon(clamd: ClamdDaemon) -> ClamdDaemon:
    clamd.start()  # a test that failed while clamd was down must not take the others with it
    return clamd


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, daemon: ClamdDaemon) -> str:
    return daemon.unix_address if request.param == "unix" else daemon.tcp_address


@pytest.fixture
def failures() -> list[str]:
    """What ``on_failure`` was told, in order (pass ``on_failure=failures.append``)."""
    return []


def client_for(address: str, failures: list[str] | None = None, **kwargs: float) -> ClamdClient:
    on_failure = failures.append if failures is not None else None
    return ClamdClient(address, on_failure=on_failure, **{**FAST, **kwargs})


async def scan(
    client: ClamdClient,
    source: bytes | ScanSource = CLEAN_PDF,
    *,
    deadline: float = 5.0,
    retry: bool = True,
) -> ScanResult:
    if isinstance(source, bytes):
        source = BytesSource(source)
    return await client.scan(
        source,
        filename="letter.pdf",
        mimetype="application/pdf",
        request_id=REQUEST_ID,
        deadline=deadline,
        retry=retry,
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- verdicts ---------------------------------------------------------------------------------


async def test_clean_pdf_is_clean_with_the_checksum_of_its_bytes(
    address: str, failures: list[str]
) -> None:
    result = await scan(client_for(address, failures))
    assert result == ScanResult(verdict="clean", checksum=sha256(CLEAN_PDF), attempts=1)
    assert failures == []


async def test_eicar_in_the_middle_of_a_pdf_is_malicious_and_its_signature_logged(
    address: str, failures: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert EICAR_PDF.index(EICAR) < CHUNK < EICAR_PDF.index(EICAR) + len(EICAR)
    caplog.set_level(logging.WARNING, logger="dd_api.scanning")
    result = await scan(client_for(address, failures), EICAR_PDF)
    assert result == ScanResult(verdict="malicious", checksum=sha256(EICAR_PDF), attempts=1)
    assert failures == []
    [record] = [r for r in caplog.records if SIGNATURE in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert REQUEST_ID in record.getMessage()
    assert record.scan_request_id == REQUEST_ID  # type: ignore[attr-defined]


async def test_bare_eicar_file_is_found_by_the_same_signature(
    daemon: ClamdDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dd_api.scanning")
    result = await scan(client_for(daemon.unix_address), EICAR)
    assert result.verdict == "malicious"
    assert any(SIGNATURE in r.getMessage() for r in caplog.records)


async def test_empty_document_is_clean(daemon: ClamdDaemon) -> None:
    result = await scan(client_for(daemon.unix_address), b"")
    assert result == ScanResult(verdict="clean", checksum=sha256(b""), attempts=1)


# -- StreamMaxLength ---------------------------------------------------------------------------


async def test_document_of_exactly_stream_max_length_is_scanned(daemon: ClamdDaemon) -> None:
    document = b"x" * daemon.stream_max_length
    result = await scan(client_for(daemon.tcp_address), document)
    assert result == ScanResult(verdict="clean", checksum=sha256(document), attempts=1)


@pytest.mark.parametrize("over", [1, 4 * 1024 * 1024], ids=["one-byte-over", "4MiB-over"])
async def test_document_over_stream_max_length_is_a_permanent_failure(
    address: str, daemon: ClamdDaemon, failures: list[str], over: int
) -> None:
    # One byte over: the whole document fits in the socket buffers and clamd's refusal is read
    # after the end mark. 4 MiB over: clamd refuses and closes mid-stream, our write fails,
    # and the refusal must still be read, not taken for a passing reset.
    result = await scan(client_for(address, failures), b"x" * (daemon.stream_max_length + over))
    assert result == ScanResult(
        verdict=None,
        checksum="",
        attempts=1,
        reason="document over clamd's StreamMaxLength",
        retryable=False,
    )
    assert failures == ["clamd StreamMaxLength"]


# -- clamd down --------------------------------------------------------------------------------


def down_kind(daemon: ClamdDaemon, address: str) -> str:
    # clamd removes its socket file when it stops; the TCP port just refuses.
    return (
        "clamd FileNotFoundError"
        if address == daemon.unix_address
        else "clamd ConnectionRefusedError"
    )


async def test_clamd_down_is_a_retryable_failure_without_retry(
    address: str, daemon: ClamdDaemon, failures: list[str]
) -> None:
    with daemon.stopped():
        result = await scan(client_for(address, failures), retry=False)
    kind = down_kind(daemon, address)
    assert result == ScanResult(verdict=None, checksum="", attempts=1, reason=kind, retryable=True)
    assert failures == [kind]


async def test_clamd_down_retries_until_the_deadline_telling_each_failure(
    address: str, daemon: ClamdDaemon, failures: list[str]
) -> None:
    with daemon.stopped():
        result = await scan(client_for(address, failures), deadline=1.0)
    kind = down_kind(daemon, address)
    assert result.verdict is None and result.retryable and result.reason == kind
    assert result.attempts > 1
    assert failures == [kind] * result.attempts


async def test_scan_gets_its_verdict_once_clamd_is_back_within_the_deadline(
    address: str, daemon: ClamdDaemon
) -> None:
    failures: list[str] = []
    failed = asyncio.Event()

    def on_failure(kind: str) -> None:
        failures.append(kind)
        failed.set()

    client = ClamdClient(address, on_failure=on_failure, backoff_base=0.05, backoff_max=0.2)
    with daemon.stopped():
        task = asyncio.create_task(scan(client, deadline=20.0))
        await asyncio.wait_for(failed.wait(), 5.0)
        await asyncio.to_thread(daemon.start)  # same socket path and port as before
        result = await task
    assert result.verdict == "clean" and result.checksum == sha256(CLEAN_PDF)
    assert result.attempts >= 2
    assert len(failures) == result.attempts - 1
    # Between clamd's bind() and listen() a connection is refused rather than not found.
    assert set(failures) <= {down_kind(daemon, address), "clamd ConnectionRefusedError"}


# -- the source --------------------------------------------------------------------------------


@contextlib.contextmanager
def listening_unix_socket() -> Iterator[tuple[str, socket.socket]]:
    """A unix socket that listens and never accepts: a connection would wait in its queue."""
    directory = tempfile.mkdtemp(prefix="dd-clamd-t-")
    path = str(Path(directory) / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen()
        listener.setblocking(False)
        yield path, listener
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


async def test_missing_spool_file_fails_permanently_without_contacting_clamd(
    tmp_path: Path, failures: list[str]
) -> None:
    source = FileSource(tmp_path / "gone.pdf", size=100)
    with listening_unix_socket() as (path, listener):
        result = await scan(client_for(path, failures), source)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing connected
    reason = "spool file unreadable: No such file or directory"
    assert result == ScanResult(
        verdict=None, checksum="", attempts=1, reason=reason, retryable=False
    )
    assert failures == [reason]


@pytest.mark.parametrize("delta", [-5, 5], ids=["shorter", "longer"])
async def test_source_not_the_size_it_declares_gets_no_verdict(
    daemon: ClamdDaemon, failures: list[str], delta: int
) -> None:
    source = BytesSource(CLEAN_PDF)
    source.size = len(CLEAN_PDF) + delta
    result = await scan(client_for(daemon.unix_address, failures), source)
    reason = "document is not the size it was stored with"
    assert result == ScanResult(
        verdict=None, checksum="", attempts=1, reason=reason, retryable=False
    )
    assert failures == [reason]


# -- ping, version -----------------------------------------------------------------------------


async def test_ping(address: str) -> None:
    await client_for(address).ping()


async def test_ping_raises_when_clamd_is_down(address: str, daemon: ClamdDaemon) -> None:
    with daemon.stopped(), pytest.raises(OSError):
        await client_for(address).ping()


async def test_version_is_read_once_and_names_the_scanner(
    address: str, daemon: ClamdDaemon
) -> None:
    client = client_for(address)
    assert client.scanner_name == "clamd"  # before the version is known
    version = await client.version()
    assert version.startswith("ClamAV 1.")
    assert client.scanner_name == f"clamd {version.split('/')[0]}"
    with daemon.stopped():
        assert await client.version() == version  # cached: clamd is not asked again


def test_scanner_name_is_a_safe_s3_tag_value() -> None:
    assert scanner_name(None) == "clamd"
    assert scanner_name("ClamAV 1.4.6/27512/Mon Jan 13 08:35:48 2025") == "clamd ClamAV 1.4.6"
    assert scanner_name("ClamAV 1.4.6\t(build #7)\n<x>") == "clamd ClamAV 1.4.6 _build _7_ _x_"
    assert scanner_name("ClamAV " + "9" * 400) == ("clamd ClamAV " + "9" * 400)[:256]


@pytest.mark.parametrize("address", ["clamd", "host:", ":3310", "host:99999", "host:port"])
def test_bad_address_is_refused_at_construction(address: str) -> None:
    with pytest.raises(ValueError, match="socket path or host:port"):
        ClamdClient(address)


@pytest.mark.parametrize("address", ["localhost:3310", "[::1]:3310", "./clamd.sock", "/run/c"])
def test_good_addresses_are_accepted(address: str) -> None:
    ClamdClient(address)


# -- failures the real clamd cannot be made to produce -----------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def stand_in(handler: Handler) -> AsyncIterator[str]:
    """A unix socket server running ``handler`` per connection; yields its path."""
    directory = tempfile.mkdtemp(prefix="dd-clamd-t-")
    path = str(Path(directory) / "s")
    server = await asyncio.start_unix_server(handler, path)
    try:
        yield path
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(directory, ignore_errors=True)


def answering(answer: bytes | None) -> Handler:
    """Read a whole INSTREAM, then answer ``answer`` (None: close without one)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\0")  # the command
        while length := int.from_bytes(await reader.readexactly(4)):
            await reader.readexactly(length)
        if answer is not None:
            writer.write(answer)
        writer.close()

    return handle


@pytest.mark.parametrize(
    ("answer", "kind", "reason", "retryable"),
    [
        (
            b"stream: Can't allocate memory ERROR\0",
            "clamd ERROR",
            "clamd ERROR: stream: Can't allocate memory",
            False,
        ),
        (None, "clamd closed early", "clamd closed early", True),
        (b"HELLO\0", "clamd unexpected answer", "clamd unexpected answer", True),
    ],
    ids=["other-error", "closed-early", "unexpected"],
)
async def test_other_answers(
    failures: list[str], answer: bytes | None, kind: str, reason: str, retryable: bool
) -> None:
    async with stand_in(answering(answer)) as path:
        result = await scan(client_for(path, failures), retry=False)
    assert result == ScanResult(
        verdict=None, checksum="", attempts=1, reason=reason, retryable=retryable
    )
    assert failures == [kind]


async def test_clamd_that_never_answers_times_out_the_attempt(failures: list[str]) -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    async with stand_in(silent) as path:
        client = client_for(path, failures, attempt_timeout=0.2)
        result = await scan(client, deadline=5.0, retry=False)
        release.set()
    assert (result.reason, result.retryable, failures) == ("clamd timeout", True, ["clamd timeout"])


async def test_ping_raises_on_a_wrong_answer() -> None:
    async def wrong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\0")
        writer.write(b"NOPE\0")
        writer.close()

    async with stand_in(wrong) as path:
        with pytest.raises(ClamdError, match="NOPE"):
            await client_for(path).ping()


# -- logs --------------------------------------------------------------------------------------


async def test_logs_never_contain_the_document(
    daemon: ClamdDaemon, caplog: pytest.LogCaptureFixture, failures: list[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(daemon.unix_address, failures)
    oversized = EICAR_PDF + MARKER * (daemon.stream_max_length // len(MARKER))
    assert (await scan(client, EICAR_PDF)).verdict == "malicious"
    assert (await scan(client, oversized)).reason == "document over clamd's StreamMaxLength"
    with daemon.stopped():
        assert (await scan(client, EICAR_PDF, deadline=0.3)).retryable
    assert any(SIGNATURE in r.getMessage() for r in caplog.records)
    logged = caplog.text + "".join(repr(vars(r)) for r in caplog.records)
    for secret in (MARKER, EICAR, EICAR[:20]):
        assert secret.decode() not in logged
