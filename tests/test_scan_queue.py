"""The scan queue: the same behaviour from the local (SQLite) queue and from SQS (on moto and
ministack), and the scan message codec."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from dd_api.queue import (
    LocalQueue,
    MalformedMessage,
    MessageCodec,
    QueueDepth,
    QueueError,
    ReceiptInvalid,
    Received,
    ScanMessage,
    ScanQueue,
    SqsQueue,
    UndecryptableKey,
    new_queue_key,
    parse_queue_key,
    sqs,
)
from dd_api.queue.base import clamp_delay, clamp_max_messages, clamp_visibility, clamp_wait
from tests.helpers import AWS_ENV, ROOT

LONG = 30.0  # a visibility no test outlives


@dataclass
class Case:
    kind: str  # local, moto or ministack
    queue: ScanQueue

    @property
    def refuses_stale_receipts(self) -> bool:
        # moto accepts any receipt a message ever had (it deletes or re-hides the message);
        # AWS only promises that the latest receipt works
        return self.kind != "moto"


def sqs_queue_url(endpoint: str) -> str:
    client = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
    )
    return client.create_queue(QueueName=f"dd-scan-{uuid.uuid4().hex[:16]}")["QueueUrl"]


@pytest.fixture(params=["local", "moto", "ministack"])
async def case(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Case]:
    """A fresh, open queue of each kind."""
    queue: ScanQueue
    if request.param == "local":
        queue = LocalQueue(tmp_path / "scan-queue.sqlite3")
    else:
        endpoint = request.getfixturevalue(f"{request.param}_endpoint")
        for name, value in AWS_ENV.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", endpoint)
        queue = SqsQueue(sqs_queue_url(endpoint))
    await queue.open()
    try:
        yield Case(request.param, queue)
    finally:
        await queue.close()


async def eventually[T](
    check: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """The first truthy result of ``check``, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def receive_one(queue: ScanQueue, *, wait: float = 5, visibility: float = LONG) -> Received:
    messages = await queue.receive(max_messages=1, wait=wait, visibility=visibility)
    assert len(messages) == 1, messages
    return messages[0]


# --- watching a long poll start -----------------------------------------------------------


@asynccontextmanager
async def watched_polls(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ScanQueue, asyncio.Event]]:
    """``case``'s queue, and an event set once a receive on it is under way.

    The local queue's receive is under way once its claim has come back empty: from then on
    it waits, and a send wakes it. An SQS receive is under way once its ReceiveMessage
    request has been handed, whole, to the emulator: the queue is reached through a relay
    that watches the requests go by (the emulators show a waiting poll in no other way).
    """
    queue = case.queue
    if isinstance(queue, LocalQueue):
        yield queue, watch_local_claims(queue, monkeypatch)
        return
    assert isinstance(queue, SqsQueue)
    async with SqsRelay(os.environ["AWS_ENDPOINT_URL_SQS"]) as relay:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", relay.url)
        relayed = SqsQueue(queue.url)
        await relayed.open()
        try:
            yield relayed, relay.receiving
        finally:
            await relayed.close()


def watch_local_claims(queue: LocalQueue, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set when a claim on ``queue`` (in its worker thread) has found nothing."""
    looked = asyncio.Event()
    loop = asyncio.get_running_loop()
    claim = queue._claim

    def claim_and_tell(max_messages: int, visibility: float) -> list[Received]:
        found = claim(max_messages, visibility)
        if not found:
            loop.call_soon_threadsafe(looked.set)
        return found

    monkeypatch.setattr(queue, "_claim", claim_and_tell)
    return looked


async def long_poll(
    queue: ScanQueue, polling: asyncio.Event, *, wait: float, timeout: float = 10
) -> asyncio.Task[list[Received]]:
    """A receive of one message for up to ``wait`` s, under way (``polling`` is set) and still
    waiting when this returns."""
    poll = asyncio.create_task(queue.receive(max_messages=1, wait=wait, visibility=LONG))
    started = asyncio.ensure_future(polling.wait())
    try:
        await asyncio.wait({poll, started}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if poll.done():
            pytest.fail(f"the poll ended before any message was sent: {poll.result()!r}")
        assert polling.is_set(), f"the poll was not under way within {timeout} s"
    except BaseException:
        poll.cancel()
        raise
    finally:
        started.cancel()
    return poll


class SqsRelay:
    """A TCP relay to an SQS endpoint (``url`` is its own): ``receiving`` is set once a whole
    ReceiveMessage request has been handed to the endpoint."""

    def __init__(self, endpoint: str) -> None:
        upstream = urlsplit(endpoint)
        self._upstream = (upstream.hostname, upstream.port)
        self.receiving = asyncio.Event()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SqsRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self._server.abort_clients()
        await self._server.wait_closed()

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        upstream, to_upstream = await asyncio.open_connection(*self._upstream)
        answers = asyncio.create_task(_copy(upstream, to_client))
        try:
            while True:  # one request at a time, as HTTP/1.1 sends them on a connection
                head = await client.readuntil(b"\r\n\r\n")
                request = head + await client.readexactly(_content_length(head))
                to_upstream.write(request)
                await to_upstream.drain()
                if b"ReceiveMessage" in request:
                    self.receiving.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            answers.cancel()
            for writer in (to_upstream, to_client):
                writer.close()
            await asyncio.gather(answers, return_exceptions=True)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
        assert name.strip().lower() != b"transfer-encoding", head  # botocore sends lengths
    return 0


async def _copy(source: asyncio.StreamReader, to: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(65536):
            to.write(data)
            await to.drain()
    to.close()


# --- both implementations ---------------------------------------------------------------


async def test_send_receive_delete(case: Case) -> None:
    queue = case.queue
    before = time.time()
    await queue.send('{"hello": "world"}')
    message = await receive_one(queue)
    assert message.body == '{"hello": "world"}'
    assert message.receive_count == 1
    assert before - 1 <= message.sent_at <= time.time() + 1  # SQS keeps milliseconds
    assert message.receipt
    await queue.delete(message.receipt)
    assert await queue.receive(max_messages=10, wait=0, visibility=LONG) == []
    assert await queue.depth() == QueueDepth(visible=0, in_flight=0, delayed=0)
    await queue.delete(message.receipt)  # deleting twice is harmless, as on SQS


async def test_receive_returns_up_to_max_messages(case: Case) -> None:
    queue = case.queue
    for index in range(12):
        await queue.send(f"message {index}")
    seen: list[str] = []

    async def drained() -> bool:
        # max_messages above SQS's 10 is clamped, not refused
        batch = await queue.receive(max_messages=50, wait=1, visibility=LONG)
        assert len(batch) <= 10
        seen.extend(message.body for message in batch)
        return len(seen) >= 12

    await eventually(drained)
    assert sorted(seen) == sorted(f"message {index}" for index in range(12))


async def test_long_poll_returns_when_a_message_arrives(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with watched_polls(case, monkeypatch) as (queue, polling):
        poll = await long_poll(queue, polling, wait=20)
        await queue.send("late")
        messages = await asyncio.wait_for(poll, 10)  # well before the 20 s poll runs out
    assert [message.body for message in messages] == ["late"]


async def test_delayed_message_is_received_after_its_delay(case: Case) -> None:
    queue = case.queue
    sent = time.monotonic()
    await queue.send("delayed", delay=1)
    early = await queue.receive(max_messages=1, wait=0, visibility=LONG)
    depth = await queue.depth()
    if time.monotonic() - sent < 1:  # otherwise this machine was too slow to tell
        assert early == []
        assert depth.visible == 0
        assert depth.delayed == 1
    if not early:
        message = await receive_one(queue, wait=10)
        assert message.body == "delayed"
        assert time.monotonic() - sent >= 0.95


async def test_unfinished_message_comes_back_after_its_visibility(case: Case) -> None:
    queue = case.queue
    await queue.send("retry me")
    first = await receive_one(queue, visibility=1)
    received = time.monotonic()
    again = await receive_one(queue, wait=10)
    assert again.body == "retry me"
    assert again.receive_count == 2
    assert again.receipt != first.receipt
    assert time.monotonic() - received >= 0.95


async def test_set_visibility_zero_returns_the_message_at_once(case: Case) -> None:
    queue = case.queue
    await queue.send("give back")
    first = await receive_one(queue)
    assert await queue.receive(max_messages=1, wait=0, visibility=LONG) == []
    await queue.set_visibility(first.receipt, 0)
    again = await receive_one(queue)
    assert again.receive_count == 2


async def test_extending_visibility_keeps_the_message_hidden(case: Case) -> None:
    queue = case.queue
    await queue.send("long scan")
    message = await receive_one(queue, visibility=1)
    await queue.set_visibility(message.receipt, LONG)
    # without the extension it would come back after 1 s, inside this 2 s poll
    assert await queue.receive(max_messages=1, wait=2, visibility=LONG) == []
    depth = await queue.depth()
    assert (depth.visible, depth.in_flight) == (0, 1)


async def test_outdated_receipt(case: Case) -> None:
    queue = case.queue
    await queue.send("twice")
    first = await receive_one(queue)
    await queue.set_visibility(first.receipt, 0)
    second = await receive_one(queue)
    assert second.receipt != first.receipt
    assert second.receive_count == 2
    if case.refuses_stale_receipts:
        with pytest.raises(ReceiptInvalid):
            await queue.set_visibility(first.receipt, 0)
        await queue.delete(first.receipt)  # ignored, as AWS does: no error, nothing deleted
        depth = await queue.depth()
        assert (depth.visible, depth.in_flight) == (0, 1)
    # what SQS guarantees: the latest receipt deletes the message
    await queue.delete(second.receipt)
    assert await queue.depth() == QueueDepth(visible=0, in_flight=0, delayed=0)


async def test_depth_counts_visible_in_flight_and_delayed(case: Case) -> None:
    queue = case.queue
    await queue.send("one")
    await queue.send("two")
    await queue.send("later", delay=600)
    await receive_one(queue)
    depth = await queue.depth()
    assert depth.visible == 1
    assert depth.delayed == 1
    assert depth.in_flight == 1


async def test_cancelled_long_poll_raises_cancelled_error(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with watched_polls(case, monkeypatch) as (queue, polling):
        # 5 s, not 20: moto and ministack go on serving an abandoned poll until its wait is
        # over (and ministack's server then takes that long to stop at the end of the session)
        poll = await long_poll(queue, polling, wait=5)
        started = time.monotonic()
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll
        assert time.monotonic() - started < 2
        # The queue is still usable. (Not by receiving: the abandoned poll, still running in
        # the emulator, would take a message sent now and hide it for its visibility timeout.)
        await queue.ping()
        assert await queue.depth() == QueueDepth(visible=0, in_flight=0, delayed=0)


async def test_limits_are_clamped(case: Case) -> None:
    queue = case.queue
    await queue.send("negative delay", delay=-5)
    message = await receive_one(queue, visibility=-1)
    assert message.body == "negative delay"
    with pytest.raises(ValueError):
        await queue.send("x", delay=float("nan"))


def test_clamps() -> None:
    assert clamp_delay(1000) == 900
    assert clamp_delay(-1) == 0
    assert clamp_visibility(50_000) == 43_200
    assert clamp_wait(25) == 20
    assert clamp_wait(0.5) == 0.5
    assert clamp_max_messages(0) == 1
    assert clamp_max_messages(11) == 10


# --- SQS ----------------------------------------------------------------------------------


async def test_sqs_errors_are_queue_errors_without_details(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_endpoint)
    missing = SqsQueue(f"{moto_endpoint}/123456789012/no-such-queue-{uuid.uuid4().hex}")
    await missing.open()
    try:
        with pytest.raises(QueueError) as raised:
            await missing.ping()
        assert "no-such-queue" not in str(raised.value)
        assert "http" not in str(raised.value)
        with pytest.raises(QueueError):
            await missing.send("secret body")
    finally:
        await missing.close()


async def test_sqs_unreachable_endpoint_is_a_queue_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqs, "MAX_ATTEMPTS", 1)  # no retry backoff: seconds otherwise
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:9")  # discard: nobody listens
    queue = SqsQueue("http://127.0.0.1:9/123456789012/queue")
    await queue.open()
    try:
        with pytest.raises(QueueError) as raised:
            await queue.ping()
        assert "127.0.0.1" not in str(raised.value)
    finally:
        await queue.close()


async def test_sqs_not_open_is_a_queue_error() -> None:
    with pytest.raises(QueueError):
        await SqsQueue("http://127.0.0.1:9/123456789012/queue").ping()


# --- local --------------------------------------------------------------------------------


@pytest.fixture
def queue_path(tmp_path: Path) -> Path:
    return tmp_path / "queue" / "scan-queue.sqlite3"


@pytest.fixture
async def local(queue_path: Path) -> AsyncIterator[LocalQueue]:
    queue = LocalQueue(queue_path)
    await queue.open()
    try:
        yield queue
    finally:
        await queue.close()


async def test_local_queue_survives_reopen(queue_path: Path) -> None:
    queue = LocalQueue(queue_path)
    await queue.open()
    await queue.send("in flight")
    await queue.send("waiting")
    await queue.send("delayed", delay=600)
    taken = await receive_one(queue)
    assert taken.body == "in flight"  # the local queue hands out the oldest first
    await queue.close()

    reopened = LocalQueue(queue_path)
    await reopened.open()
    try:
        assert await reopened.depth() == QueueDepth(visible=1, in_flight=1, delayed=1)
        assert (await receive_one(reopened)).body == "waiting"
        await reopened.delete(taken.receipt)  # receipts outlive a restart
        assert await reopened.depth() == QueueDepth(visible=0, in_flight=1, delayed=1)
    finally:
        await reopened.close()
    assert queue_path.stat().st_mode & 0o077 == 0  # bodies carry wrapped keys: owner only


async def test_local_queue_outdated_receipt_cannot_delete_or_extend(local: LocalQueue) -> None:
    await local.send("twice")
    first = await receive_one(local, visibility=0)  # visible again at once
    second = await receive_one(local)
    await local.delete(first.receipt)
    with pytest.raises(ReceiptInvalid):
        await local.set_visibility(first.receipt, LONG)
    await local.set_visibility(second.receipt, 0)
    third = await receive_one(local)
    assert (third.body, third.receive_count) == ("twice", 3)


async def test_two_local_queues_on_one_file_never_share_a_message(queue_path: Path) -> None:
    first, second = LocalQueue(queue_path), LocalQueue(queue_path)
    await first.open()
    await second.open()
    try:
        bodies = {f"message {index}" for index in range(60)}
        for body in bodies:
            await first.send(body)

        async def drain(queue: LocalQueue) -> list[str]:
            taken: list[str] = []
            while batch := await queue.receive(max_messages=3, wait=0, visibility=LONG):
                taken.extend(message.body for message in batch)
            return taken

        results = await asyncio.gather(*(drain(queue) for queue in (first, second, first)))
        taken = [body for result in results for body in result]
        assert sorted(taken) == sorted(bodies)  # each exactly once
    finally:
        await first.close()
        await second.close()


_DRAIN_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from dd_api.queue.local import LocalQueue

async def main():
    queue = LocalQueue(Path(sys.argv[1]))
    await queue.open()
    print("ready", flush=True)
    sys.stdin.readline()
    taken = []
    while batch := await queue.receive(max_messages=1, wait=0, visibility=30):
        if not taken:
            print("draining", flush=True)
        taken.extend(message.body for message in batch)
    await queue.close()
    print(json.dumps(taken), flush=True)

asyncio.run(main())
"""


async def test_local_queue_claims_are_atomic_across_processes(
    local: LocalQueue, queue_path: Path
) -> None:
    bodies = {f"message {index}" for index in range(300)}
    for body in bodies:
        await local.send(body)
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DRAIN_SCRIPT,
        str(queue_path),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert other.stdin is not None and other.stdout is not None
    try:
        assert await asyncio.wait_for(other.stdout.readline(), 20) == b"ready\n"
        other.stdin.write(b"go\n")
        await other.stdin.drain()
        other.stdin.close()
        # start once the other process is draining, so that both claim at the same time
        assert await asyncio.wait_for(other.stdout.readline(), 20) == b"draining\n"
        mine: list[str] = []
        while batch := await local.receive(max_messages=1, wait=0, visibility=LONG):
            mine.extend(message.body for message in batch)
        theirs = json.loads(await asyncio.wait_for(other.stdout.readline(), 20))
        assert await asyncio.wait_for(other.wait(), 20) == 0
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()
    assert sorted(mine + theirs) == sorted(bodies)  # each exactly once


async def test_local_queue_message_from_another_process(
    local: LocalQueue, queue_path: Path
) -> None:
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from dd_api.queue.local import LocalQueue\n"
        "async def main():\n"
        "    queue = LocalQueue(Path(sys.argv[1]))\n"
        "    await queue.open()\n"
        "    await queue.send('from elsewhere')\n"
        "    await queue.close()\n"
        "asyncio.run(main())\n"
    )
    poll = asyncio.create_task(local.receive(max_messages=1, wait=20, visibility=LONG))
    sender = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(queue_path), cwd=ROOT
    )
    assert await asyncio.wait_for(sender.wait(), 20) == 0
    messages = await asyncio.wait_for(poll, 10)  # found by polling the file
    assert [message.body for message in messages] == ["from elsewhere"]


async def test_local_queue_dead_letters_a_poison_message(
    queue_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = LocalQueue(queue_path, max_receives=2)
    await queue.open()
    try:
        await queue.send("poison body")
        for _ in range(2):
            poison = await receive_one(queue)
            assert poison.body == "poison body"
            await queue.set_visibility(poison.receipt, 0)
        await queue.send("fine")
        with caplog.at_level(logging.ERROR, logger="dd_api.queue.local"):
            received = await queue.receive(max_messages=10, wait=0, visibility=LONG)
            assert [message.body for message in received] == ["fine"]
            assert await queue.receive(max_messages=10, wait=0, visibility=0) == []
        assert await queue.depth() == QueueDepth(visible=0, in_flight=1, delayed=0)
    finally:
        await queue.close()
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1  # logged once
    assert "poison" not in errors[0].getMessage()
    with sqlite3.connect(queue_path) as db:
        rows = db.execute("SELECT body, receive_count FROM dead_letters").fetchall()
    assert rows == [("poison body", 2)]


async def test_local_queue_refuses_a_body_sqs_would_refuse(local: LocalQueue) -> None:
    with pytest.raises(QueueError):
        await local.send("x" * 300_000)


async def test_local_queue_errors(tmp_path: Path) -> None:
    closed = LocalQueue(tmp_path / "q.sqlite3")
    with pytest.raises(QueueError):
        await closed.ping()
    (tmp_path / "not-a-dir").write_text("")
    unusable = LocalQueue(tmp_path / "not-a-dir" / "q.sqlite3")
    with pytest.raises(QueueError) as raised:
        await unusable.open()
    assert "not-a-dir" not in str(raised.value)


# --- the message codec --------------------------------------------------------------------

KEY = bytes(range(32))
OLD_KEY = bytes(range(100, 132))
DOCUMENT_KEY = bytes(range(200, 232))


def scan_message(key: bytes | None = DOCUMENT_KEY, **changes: object) -> ScanMessage:
    message = ScanMessage(
        service_id=uuid.uuid4(),
        document_id=uuid.uuid4(),
        sending_method="attach",
        filename="rapport annuel é.pdf",
        mimetype="application/pdf",
        size=1234,
        trace_id="trace-1",
        created=1_700_000_000.5,
        key=key,
    )
    return replace(message, **changes)  # type: ignore[arg-type]


def secrets_in(text: str) -> list[str]:
    """The key material of these tests that appears in ``text``, in any usual spelling."""
    found = []
    for key in (KEY, OLD_KEY, DOCUMENT_KEY):
        for spelling in (key.hex(), base64.b64encode(key).decode(), repr(key)):
            if spelling in text:
                found.append(spelling)
    return found


@pytest.mark.parametrize("key", [DOCUMENT_KEY, None], ids=["with-key", "without-key"])
def test_codec_round_trip(key: bytes | None) -> None:
    codec = MessageCodec([KEY])
    message = scan_message(key, sending_method=None if key is None else "attach")
    body = codec.encode(message)
    assert codec.decode(body) == message
    assert '": ' not in body and ", " not in body  # compact
    assert json.loads(body)["v"] == 1
    assert not secrets_in(body)
    assert DOCUMENT_KEY.hex() not in repr(message) and "key=" not in repr(message)


def test_codec_encrypts_with_a_fresh_nonce() -> None:
    codec = MessageCodec([KEY])
    message = scan_message()
    assert json.loads(codec.encode(message))["key"] != json.loads(codec.encode(message))["key"]


def test_codec_wrong_key_is_undecryptable_and_carries_the_ids() -> None:
    message = scan_message()
    body = MessageCodec([OLD_KEY]).encode(message)
    with pytest.raises(UndecryptableKey) as raised:
        MessageCodec([KEY]).decode(body)
    assert raised.value.message == replace(message, key=None)
    assert raised.value.message.document_id == message.document_id
    for text in (str(raised.value), repr(raised.value)):
        assert not secrets_in(text)
        assert json.loads(body)["key"] not in text
        assert message.filename not in text


def test_codec_accepts_previous_keys_during_rotation() -> None:
    message = scan_message()
    old_body = MessageCodec([OLD_KEY]).encode(message)
    rotated = MessageCodec([KEY, OLD_KEY])
    assert rotated.decode(old_body) == message
    # new messages use the current key only
    assert MessageCodec([KEY]).decode(rotated.encode(message)) == message
    with pytest.raises(UndecryptableKey):
        MessageCodec([OLD_KEY]).decode(rotated.encode(message))


def test_codec_key_moved_to_another_document_does_not_open() -> None:
    codec = MessageCodec([KEY])
    mine, other = scan_message(), scan_message(key=bytes(32))
    moved = json.loads(codec.encode(other))
    moved["key"] = json.loads(codec.encode(mine))["key"]
    with pytest.raises(UndecryptableKey) as raised:
        codec.decode(json.dumps(moved))
    assert raised.value.message.document_id == other.document_id


def _body(**changes: object) -> str:
    data = json.loads(MessageCodec([KEY]).encode(scan_message()))
    for name, value in changes.items():
        if value is _MISSING:
            del data[name]
        else:
            data[name] = value
    return json.dumps(data)


_MISSING = object()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("", id="empty"),
        pytest.param("[1, 2]", id="array"),
        pytest.param("{}", id="empty-object"),
        pytest.param("[" * 100_000, id="deeply-nested"),
        pytest.param(_body(v=2), id="future-version"),
        pytest.param(_body(v=True), id="version-true"),
        pytest.param(_body(v=_MISSING), id="no-version"),
        pytest.param(_body(document_id=_MISSING), id="no-document-id"),
        pytest.param(_body(document_id="not-a-uuid"), id="bad-document-id"),
        pytest.param(_body(service_id=12), id="numeric-service-id"),
        pytest.param(_body(sending_method=_MISSING), id="no-sending-method"),
        pytest.param(_body(sending_method=3), id="bad-sending-method"),
        pytest.param(_body(filename=None), id="null-filename"),
        pytest.param(_body(mimetype=["a"]), id="bad-mimetype"),
        pytest.param(_body(size="12"), id="string-size"),
        pytest.param(_body(size=-1), id="negative-size"),
        pytest.param(_body(size=True), id="boolean-size"),
        pytest.param(_body(trace_id=_MISSING), id="no-trace-id"),
        pytest.param(_body(created="yesterday"), id="bad-created"),
        pytest.param(_body(created=None).replace("null", "NaN"), id="nan-created"),
        pytest.param(_body(key=_MISSING), id="no-key-field"),
        pytest.param(_body(key=42), id="numeric-key"),
    ],
)
def test_codec_malformed_bodies(body: str) -> None:
    with pytest.raises(MalformedMessage) as raised:
        MessageCodec([KEY]).decode(body)
    text = str(raised.value)
    assert not secrets_in(text)
    assert not body or body[:20] not in text


@pytest.mark.parametrize(
    "wrapped",
    [
        pytest.param("!!not base64!!", id="not-base64"),
        pytest.param(base64.b64encode(b"short").decode(), id="too-short"),
        pytest.param(base64.b64encode(bytes(61)).decode(), id="too-long"),
    ],
)
def test_codec_garbled_key_is_undecryptable(wrapped: str) -> None:
    with pytest.raises(UndecryptableKey) as raised:
        MessageCodec([KEY]).decode(_body(key=wrapped))
    assert raised.value.message.key is None


def test_codec_refuses_bad_keys() -> None:
    with pytest.raises(ValueError):
        MessageCodec([])
    with pytest.raises(ValueError):
        MessageCodec([KEY, b"short"])
    with pytest.raises(ValueError):
        MessageCodec([KEY]).encode(scan_message(key=b"short"))


def test_parse_queue_key_accepts_base64_spellings() -> None:
    key = bytes(range(250, 256)) + bytes(range(26))  # has + and / in standard base64
    standard = base64.b64encode(key).decode()
    urlsafe = base64.urlsafe_b64encode(key).decode()
    assert "+" in standard or "/" in standard
    for text in (standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("="), f" {standard}\n"):
        assert parse_queue_key(text) == key


def test_new_queue_key_is_a_fresh_valid_key() -> None:
    first, second = new_queue_key(), new_queue_key()
    assert first != second
    assert len(parse_queue_key(first)) == 32
    MessageCodec([parse_queue_key(first)])


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("   ", "empty", id="blank"),
        pytest.param("this is not base64!", "base64", id="not-base64"),
        pytest.param("A" * 45, "base64", id="impossible-length"),
        pytest.param(base64.b64encode(bytes(16)).decode(), "32 bytes", id="16-bytes"),
        pytest.param(base64.b64encode(bytes(33)).decode(), "32 bytes", id="33-bytes"),
    ],
)
def test_parse_queue_key_errors(raw: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as raised:
        parse_queue_key(raw)
    if raw.strip():
        assert raw.strip() not in str(raised.value)
