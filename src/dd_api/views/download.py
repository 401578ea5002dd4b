"""Downloads: ``/services/<id>/documents/<id>`` and the short public ``/d/<b64>/<b64>`` link."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import socket
import struct
import termios
import unicodedata
import weakref
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from urllib.parse import quote
from uuid import UUID

from dd_compat import json_error
from quart import Blueprint, Response, current_app, request
from werkzeug.exceptions import NotFound

from ..errors import ApiError
from ..runtime import runtime
from ..scanning.verdict import Verdict, classify
from ..store import DocumentStore, Location, StoredDocument
from .params import document_key
from .store_errors import store_errors

log = logging.getLogger(__name__)

blueprint = Blueprint("documents", __name__)

BUSY = "Too many downloads in progress, try again later"
# Most downloads end within seconds; a slot held by a stalled reader is freed within
# DOWNLOAD_STALL_SECONDS.
RETRY_AFTER_SECONDS = 5
_SLOTS = "dd_api.download_slots"
# SO_LINGER on, 0 s: closing sends a reset instead of queueing a FIN behind bytes the
# client will never read.
_LINGER_RESET = struct.pack("ii", 1, 0)
_INT = struct.Struct("i")
# request -> Quart's send wrapper -> Hypercorn's HTTP stream -> H11 protocol -> TCP server
_MAX_SEND_HOPS = 6


@blueprint.get("/services/<uuid:service_id>/documents/<uuid:document_id>")
async def download_document(service_id: UUID, document_id: UUID) -> Response:
    location = Location(service_id, document_id, request.args.get("sending_method", "link"))
    key = document_key(location, request.args.get("key"))
    return await _serve(location, key)


@blueprint.get("/d/<base64_uuid:service_id>/<base64_uuid:document_id>")
async def download_short_link(service_id: UUID, document_id: UUID) -> Response:
    # The public link: every failure is the same 404 as an unknown URL, so it tells a
    # stranger nothing (not even whether the ids exist).
    location = Location(service_id, document_id, request.args.get("sending_method", "link"))
    try:
        key = document_key(location, request.args.get("key"))
        return await _serve(location, key)
    except ApiError as error:
        if error.status >= 500:
            raise
        raise NotFound() from None


async def _serve(location: Location, key: bytes | None) -> Response:
    slot = _slots().take()
    if slot is None:
        return _busy(location)
    try:
        return await _respond(location, key, slot)
    except BaseException:
        slot.release()
        raise


async def _respond(location: Location, key: bytes | None, slot: _Slot) -> Response:
    store = runtime().store
    with store_errors(location, "Download"):
        tags, document = await _tags_and_document(store, location, key)
    try:
        _check_verdict(location, classify(tags))
        return _document_response(location, document, slot)
    except BaseException:
        document.close()
        raise


def _document_response(location: Location, document: StoredDocument, slot: _Slot) -> Response:
    if request.method == "HEAD":
        # headers only: release the S3 connection (or file) without reading the body
        document.close()
        slot.release()
        response = Response(b"", mimetype=document.mimetype)
    else:
        stall = runtime().settings.DOWNLOAD_STALL_SECONDS
        body = _DownloadBody(document, slot, _StallWatch(stall, _client_transport(), location))
        response = Response(body, mimetype=document.mimetype)
        runtime().metrics.download_bytes.inc(document.size)
    # Large files on slow links must not be cut off by Quart's RESPONSE_TIMEOUT, which
    # would leave the connection hanging anyway: only a stalled client is (_StallWatch).
    response.timeout = None
    response.headers["Content-Length"] = str(document.size)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    filename = request.args.get("filename")
    if filename:
        response.headers.set("Content-Disposition", "attachment", **_download_names(filename))
    return response


def _busy(location: Location) -> Response:
    # Answered at once: queueing would only pile more waiting connections on a busy instance.
    log.warning("Download refused: DOWNLOAD_CONCURRENCY reached", extra=location.log_extra)
    response = json_error(503, BUSY)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


async def _tags_and_document(
    store: DocumentStore, location: Location, key: bytes | None
) -> tuple[dict[str, str], StoredDocument]:
    # Both requests at once: the verdict check must not add a round trip to every download.
    opening = asyncio.ensure_future(store.get(location, key))
    reading = asyncio.ensure_future(store.get_tags(location))
    try:
        await asyncio.wait((opening, reading))
    except BaseException:
        # Cancelled (the client left): a document opened meanwhile must still be closed.
        _abandon(opening, reading)
        raise
    error = opening.exception()
    if error is not None:
        _abandon(reading)
        raise error
    document = opening.result()
    try:
        return reading.result(), document
    except BaseException:
        document.close()
        raise


def _abandon(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
        task.add_done_callback(_dispose)


def _dispose(task: asyncio.Future[Any]) -> None:
    """Whatever an abandoned request produced: a document that opened after all is closed."""
    if task.cancelled() or task.exception() is not None:
        return
    result = task.result()
    if isinstance(result, StoredDocument):
        result.close()


def _check_verdict(location: Location, verdict: Verdict) -> None:
    extra = {**location.log_extra, "scan_verdict": verdict.value}
    if verdict is Verdict.MALICIOUS:
        log.warning("Download blocked: malicious content", extra=extra)
        raise ApiError(423, "Document download blocked")
    # The rest is served: after a timeout or a failed scan the email may already be out.
    if verdict is Verdict.IN_PROGRESS:
        log.info("Document served before its scan finished", extra=extra)
    elif verdict is Verdict.FAILED:
        log.error("Document served although its scan failed", extra=extra)
    elif verdict is Verdict.UNSUPPORTED:
        log.warning("Document served although the scanner does not support it", extra=extra)


def _download_names(filename: str) -> dict[str, str]:
    """Werkzeug's ``send_file`` naming, minus anything that could break the header."""
    name = "".join(ch if unicodedata.category(ch)[0] != "C" else "_" for ch in filename)
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
        return {"filename": simple, "filename*": f"UTF-8''{quote(name, safe='!#$&+^`|~')}"}
    return {"filename": name}


# -- the limit on downloads at once ----------------------------------------------------------


class _Slot:
    __slots__ = ("__weakref__", "_held")

    def __init__(self, held: weakref.WeakSet[_Slot]) -> None:
        self._held = held

    def release(self) -> None:
        self._held.discard(self)


class _Slots:
    """The downloads running at once in this process, up to DOWNLOAD_CONCURRENCY.

    Weakly held: Quart drops a response it never started sending (the client left first)
    without closing its body, and that download's slot must come back all the same.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held: weakref.WeakSet[_Slot] = weakref.WeakSet()

    def take(self) -> _Slot | None:
        if len(self._held) >= self._limit:
            return None
        slot = _Slot(self._held)
        self._held.add(slot)
        return slot


def _slots() -> _Slots:
    slots = current_app.extensions.get(_SLOTS)
    if slots is None:
        slots = _Slots(runtime().settings.DOWNLOAD_CONCURRENCY)
        current_app.extensions[_SLOTS] = slots
    return slots


# -- the body, and the cut-off of a client that reads nothing --------------------------------


class _DownloadBody:
    """A download's response body: its document, slot and stall watch end together."""

    def __init__(self, document: StoredDocument, slot: _Slot, watch: _StallWatch) -> None:
        self._document = document
        self._slot = slot
        self._watch = watch
        watch.on_stall = self.close  # the watch ends the download from its own task

    def __aiter__(self) -> _DownloadBody:
        return self

    async def __anext__(self) -> bytes:
        self._watch.fetching()
        try:
            chunk = await anext(self._document)
        except BaseException:
            self.close()
            raise
        self._watch.sending()
        return chunk

    async def aclose(self) -> None:
        try:
            await self._document.aclose()
        finally:
            self.close()

    def close(self) -> None:
        self._watch.stop()
        self._document.close()
        self._slot.release()


class _StallWatch:
    """Cuts a download off once its client has taken no bytes for ``limit`` seconds.

    Sending a chunk waits until the client has read most of it, so a client that reads
    nothing would hold the S3 body, its pool connection and the download slot for ever.
    Progress is counted in bytes leaving the transport's and the kernel's send buffers,
    not in chunks: a slow client that keeps reading is never cut off, however long one
    chunk takes it. Time spent waiting on the store is not the client's (S3 has its own
    read timeout).
    """

    def __init__(
        self, limit: float, transport: asyncio.WriteTransport | None, location: Location
    ) -> None:
        self.on_stall: Callable[[], None] = lambda: None
        self._limit = limit
        self._tick = min(limit / 4, 1.0)
        self._transport = transport
        self._location = location
        self._sender: asyncio.Task[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._handed = 0
        self._sending = False

    def fetching(self) -> None:
        """Quart asks for the next chunk: the client has taken the previous one."""
        if self._task is None and not self._stopped:
            # the task that sends the response, and is stuck in it when the client stalls
            self._sender = asyncio.current_task()
            self._task = asyncio.get_running_loop().create_task(self._watch())
        self._handed += 1
        self._sending = False

    def sending(self) -> None:
        self._sending = True

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        last = self._position()
        idle_since = loop.time()
        while loop.time() - idle_since < self._limit:
            await asyncio.sleep(self._tick)
            position = self._position()
            handed_more, drained = position[0] != last[0], position[1] < last[1]
            if not self._sending or handed_more or drained:
                idle_since = loop.time()
            last = position
        self._cut_off()

    def _position(self) -> tuple[int, int]:
        unsent = 0 if self._transport is None else _unsent_bytes(self._transport)
        return self._handed, unsent

    def _cut_off(self) -> None:
        log.warning(
            "Download cut off: the client read nothing for %s s",
            self._limit,
            extra=self._location.log_extra,
        )
        if self._transport is None:
            _warn_connection_left_open()
        elif not self._transport.is_closing():
            _reset(self._transport)
        self.on_stall()
        if self._sender is not None:
            # out of its blocked send; Quart then closes the body, Hypercorn the stream
            self._sender.cancel()


def _client_transport() -> asyncio.WriteTransport | None:
    """The transport of this request's HTTP/1 connection, which ASGI does not expose.

    Only aborting the transport really closes a connection whose client reads nothing:
    ending the response, or closing the connection gracefully, waits for the unsent bytes
    to drain, which is for ever. It is found by following the send callable Hypercorn gave
    Quart to Hypercorn's TCP server; None when any link differs (another server, HTTP/2,
    the test client), and a stall then only ends the response.
    """
    if request.http_version not in ("1.0", "1.1"):
        return None
    push = getattr(request, "_send_push_promise", None)
    step = push.args[0] if isinstance(push, functools.partial) and push.args else None
    for _ in range(_MAX_SEND_HOPS):
        owner = getattr(getattr(step, "__wrapped__", step), "__self__", None)
        writer = getattr(owner, "writer", None)
        if isinstance(writer, asyncio.StreamWriter):
            return writer.transport
        step = getattr(owner, "send", None)
    return None


def _unsent_bytes(transport: asyncio.WriteTransport) -> int:
    """Bytes written but not yet taken by the client: in the transport, then in the kernel."""
    buffered = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    outq = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on Linux: unacknowledged bytes
    if sock is None or outq is None:
        return buffered
    try:
        queued = fcntl.ioctl(sock.fileno(), outq, _INT.pack(0))
    except OSError:
        return buffered
    unacknowledged: int = _INT.unpack(queued)[0]
    return buffered + unacknowledged


def _reset(transport: asyncio.WriteTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


@functools.cache
def _warn_connection_left_open() -> None:
    log.warning(
        "Stalled downloads are ended, but their connections cannot be closed here: "
        "the server's transport is not reachable"
    )
