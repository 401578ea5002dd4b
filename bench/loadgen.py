"""The load generator: its own process, driven by ``bench/run.py`` over stdin/stdout.

Each line on stdin is one JSON command; each answer is one JSON line on stdout (logs go to
stderr). Commands:

* ``{"op": "init", "s3": URL, "bucket": NAME, "token": T, "service_id": UUID,
  "watch": {NAME: PID}, "queue": URL}``: ``watch`` names the processes whose CPU time each
  phase reports; ``queue`` is the SQS queue (on the same moto server) of the raw floor's
  SendMessage.
* ``{"op": "pass", "variant": NAME, "base_url": URL | null, "size": BYTES, "concurrency": C,
  "count": N, "download": BOOL, "send": BOOL, "wait_s": S}``: a closed loop of ``N`` uploads
  with ``C`` in flight; for dd-api, a wait (at most ``S``) until every one has its verdict tag;
  then (optionally) a closed loop downloading the same documents. ``base_url`` null means the
  floor: raw aioboto3 PutObject/GetObject of the same bytes (same SSE-C key, content type and
  tag as dd-api sends) against the same S3 server; ``send`` also sends, in parallel, a scan
  message as dd-api sends one beside each document (SQS SendMessage, encrypted key, delayed).
* ``{"op": "outage_upload", "base_urls": [URL, ...], "sizes": [[BYTES, N], ...],
  "concurrency": C}``: the outage cell's uploads, every document's bytes unique, the sizes
  interleaved, the servers taken in turn; the documents are kept for ``outage_verdicts``.
* ``{"op": "outage_verdicts", "wait_s": S, "poll_s": P}``: wait (at most ``S``) until every
  document of the last ``outage_upload`` has a verdict; answer each one's SHA-256, verdict and
  ``av-timestamp``.
* ``{"op": "watch", "watch": {NAME: PID}}``: replace the processes watched.
* ``{"op": "cleanup"}``: empty the bucket.
* ``{"op": "quit"}``

Every request, to dd-api and to S3, goes through aiohttp (aioboto3's HTTP client), so each
comparison has the same client cost on both sides: httpx, pure Python on top of h11, spent
about 30 % more CPU than aiohttp receiving the same 10 MiB, which on this 2-core machine came
out of the servers' share.

Upload latency is request start to the full 201 body; the 201 time is also kept as wall-clock
time. The verdict time is ``av-timestamp`` (epoch ms the server writes in the verdict tag set,
taken just before the tag write) minus that wall-clock time: same machine, same clock, so the
tags are polled only between the measured phases, and the polling interval does not count.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aioboto3
import aiohttp
from botocore.config import Config as BotoConfig

from dd_api.queue import MessageCodec, ScanMessage, new_queue_key, parse_queue_key

CHUNK = 64 * 1024
ERROR_SAMPLES = 5
POOL = 64
IN_PROGRESS = "in_progress"
POLL_S = 0.2
POLL_BATCH = 8
# dd-api delays a fast-path scan's message by SCAN_QUEUE_DELAY_SECONDS (default 60)
MESSAGE_DELAY_S = 60


@dataclass
class Doc:
    variant: str
    object_key: str
    key: bytes
    at_201: float  # wall clock
    url: str | None = None  # dd-api download link (None for the raw floor)
    sha256: str = ""  # of the bytes uploaded (the outage cell's, each unique)


@dataclass
class Outcome:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    nbytes: int = 0
    wall_s: float = 0.0

    def report(self) -> dict[str, Any]:
        return {
            "latencies_ms": [round(value, 2) for value in self.latencies_ms],
            "ok": len(self.latencies_ms),
            "errors": len(self.errors),
            "error_samples": self.errors[:ERROR_SAMPLES],
            "bytes": self.nbytes,
            "wall_s": round(self.wall_s, 4),
        }


class LoadGen:
    def __init__(self) -> None:
        self.bucket = ""
        self.token = ""
        self.service_id = ""
        self.s3: Any = None
        self._s3_context: Any = None
        self.http: dict[str, aiohttp.ClientSession] = {}
        self.payloads: dict[int, bytes] = {}
        self.watch: dict[str, int] = {}
        self.sqs: Any = None
        self._sqs_context: Any = None
        self.queue = ""
        self.codec = MessageCodec([parse_queue_key(new_queue_key())])
        self.outage_docs: list[Doc] = []

    # -- commands -----------------------------------------------------------------------------

    async def init(
        self, s3: str, bucket: str, token: str, service_id: str, watch: dict[str, int], queue: str
    ) -> dict[str, Any]:
        self.bucket, self.token, self.service_id = bucket, token, service_id
        self.watch = watch | {"loadgen": os.getpid()}
        self.queue = queue
        config = BotoConfig(
            max_pool_connections=POOL, retries={"mode": "standard", "max_attempts": 3}
        )
        session = aioboto3.Session()
        self._s3_context = session.client(
            "s3", endpoint_url=s3, region_name="us-east-1", config=config
        )
        self.s3 = await self._s3_context.__aenter__()
        self._sqs_context = session.client(
            "sqs", endpoint_url=s3, region_name="us-east-1", config=config
        )
        self.sqs = await self._sqs_context.__aenter__()
        return {"pid": os.getpid()}

    async def run_pass(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Uploads; for dd-api, the wait for their verdicts; then downloads of the same docs."""
        payload = self.payload(cmd["size"])
        base_url = cmd["base_url"]
        docs: list[Doc] = []
        if base_url is None:
            put = self._raw_put(cmd["variant"], payload, docs, send=cmd.get("send", False))
        else:
            put = self._api_put(cmd["variant"], base_url, payload, docs)
        cpu = self.cpu_seconds()
        upload = await closed_loop(cmd["count"], cmd["concurrency"], put)
        answer: dict[str, Any] = {"upload": upload.report(), "cpu_s": {}}
        answer["cpu_s"]["upload"] = self.cpu_since(cpu)
        if base_url is not None:
            # downloads are measured once the server's scans are over, not beside them
            answer["verdicts"] = await self.verdicts(docs, cmd["wait_s"])
        if cmd.get("download", True):
            get = self._raw_get(docs, payload) if base_url is None else self._api_get(docs, payload)
            cpu = self.cpu_seconds()
            answer["download"] = (await closed_loop(len(docs), cmd["concurrency"], get)).report()
            answer["cpu_s"]["download"] = self.cpu_since(cpu)
        return answer

    def cpu_seconds(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.watch.items()}

    def cpu_since(self, before: dict[str, float]) -> dict[str, float]:
        now = self.cpu_seconds()
        return {name: round(now[name] - before[name], 3) for name in before}

    async def verdicts(self, docs: list[Doc], wait_s: float) -> dict[str, Any]:
        tags = await self._wait_for_verdicts(docs, wait_s)
        entry: dict[str, Any] = {"latencies_s": [], "missing": 0, "verdicts": {}}
        for doc in docs:
            found = tags.get(doc.object_key, {})
            status = found.get("av-status", IN_PROGRESS)
            entry["verdicts"][status] = entry["verdicts"].get(status, 0) + 1
            if status == IN_PROGRESS or "av-timestamp" not in found:
                entry["missing"] += 1
                continue
            waited = int(found["av-timestamp"]) / 1000 - doc.at_201
            entry["latencies_s"].append(round(waited, 4))
        return entry

    async def outage_upload(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Uploads of unique bytes, sizes interleaved, to the servers in turn."""
        # each size's uploads spread evenly over the run: 1,500 + 100 puts a large one every 16
        schedule = sorted(
            (index / count, size) for size, count in cmd["sizes"] for index in range(count)
        )
        sizes = iter(size for _, size in schedule)
        servers = itertools.cycle(cmd["base_urls"])
        docs: list[Doc] = []
        self.outage_docs = docs
        puts = {url: self._api_put("outage", url, b"", docs) for url in cmd["base_urls"]}

        async def put(outcome: Outcome) -> None:
            payload = self.unique_payload(next(sizes))
            digest = hashlib.sha256(payload).hexdigest()
            await puts[next(servers)](outcome, payload, digest)

        cpu = self.cpu_seconds()
        upload = await closed_loop(len(schedule), cmd["concurrency"], put)
        return {"upload": upload.report(), "cpu_s": {"upload": self.cpu_since(cpu)}}

    async def outage_verdicts(self, wait_s: float, poll_s: float) -> dict[str, Any]:
        docs = self.outage_docs
        tags = await self._wait_for_verdicts(docs, wait_s, poll_s)
        found = []
        for doc in docs:
            entry = tags.get(doc.object_key, {})
            stamp = entry.get("av-timestamp")
            found.append(
                {
                    "sha256": doc.sha256,
                    "verdict": entry.get("av-status", IN_PROGRESS),
                    "verdict_at": int(stamp) / 1000 if stamp else None,
                    "at_201": doc.at_201,
                }
            )
        return {"documents": found}

    async def cleanup(self) -> dict[str, Any]:
        """Delete everything (documents, and any helper objects the servers wrote)."""
        paginator = self.s3.get_paginator("list_objects_v2")
        keys = [
            item["Key"]
            async for page in paginator.paginate(Bucket=self.bucket)
            for item in page.get("Contents", [])
        ]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            await self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
        return {"deleted": len(keys)}

    # -- uploads ------------------------------------------------------------------------------

    def _api_put(
        self, variant: str, base_url: str, payload: bytes, docs: list[Doc]
    ) -> Callable[..., Awaitable[None]]:
        client = self._client(base_url)
        url = f"{base_url}/services/{self.service_id}/documents"
        headers = {"Authorization": f"Bearer {self.token}"}
        form = {"filename": "bench.pdf", "sending_method": "link"}

        async def put(outcome: Outcome, content: bytes = payload, sha256: str = "") -> None:
            data = aiohttp.FormData(form)
            data.add_field(
                "document", content, filename="bench.pdf", content_type="application/pdf"
            )
            started = time.perf_counter()
            async with client.post(url, data=data, headers=headers) as response:
                answer = await response.read()
            at_201 = time.time()
            if response.status != 201:
                raise Failure(f"upload {response.status}: {answer[:200]!r}")
            outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
            outcome.nbytes += len(content)
            body = json.loads(answer)["document"]
            docs.append(_doc_from_201(variant, self.service_id, body, at_201, sha256))

        return put

    def _raw_put(
        self, variant: str, payload: bytes, docs: list[Doc], *, send: bool
    ) -> Callable[[Outcome], Awaitable[None]]:
        """PutObject as dd-api sends it; ``send`` adds its scan message in parallel."""

        async def put(outcome: Outcome) -> None:
            key, object_id = secrets.token_bytes(32), uuid.uuid4()
            writes = [self._put_document(f"raw/{object_id}", payload, key)]
            if send:
                writes.append(self._send_message(object_id, len(payload), key))
            started = time.perf_counter()
            await asyncio.gather(*writes)
            outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
            outcome.nbytes += len(payload)
            docs.append(Doc(variant, f"raw/{object_id}", key, time.time()))

        return put

    async def _put_document(self, object_key: str, payload: bytes, key: bytes) -> None:
        await self.s3.put_object(
            Bucket=self.bucket,
            Key=object_key,
            Body=payload,
            ContentLength=len(payload),
            ContentType="application/pdf",
            Tagging=f"av-status={IN_PROGRESS}",
            SSECustomerKey=key,
            SSECustomerAlgorithm="AES256",
        )

    async def _send_message(self, object_id: uuid.UUID, size: int, key: bytes) -> None:
        """The scan message dd-api sends beside a document (its fast-path delay included)."""
        message = ScanMessage(
            service_id=uuid.UUID(self.service_id),
            document_id=object_id,
            sending_method="link",
            filename="bench.pdf",
            mimetype="application/pdf",
            size=size,
            trace_id=secrets.token_hex(16),
            created=time.time(),
            key=key,
        )
        await self.sqs.send_message(
            QueueUrl=self.queue,
            MessageBody=self.codec.encode(message),
            DelaySeconds=MESSAGE_DELAY_S,
        )

    # -- downloads ----------------------------------------------------------------------------

    def _api_get(self, docs: list[Doc], payload: bytes) -> Callable[[Outcome], Awaitable[None]]:
        queue = iter(docs)

        async def get(outcome: Outcome) -> None:
            doc = next(queue)
            assert doc.url is not None
            client = self._client(_origin(doc.url))
            started = time.perf_counter()
            async with client.get(doc.url, auto_decompress=False) as response:
                if response.status != 200:
                    answer = await response.read()
                    raise Failure(f"download {response.status}: {answer[:200]!r}")
                received = await _compare(response.content.iter_chunked(CHUNK), payload)
            outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
            outcome.nbytes += received

        return get

    def _raw_get(self, docs: list[Doc], payload: bytes) -> Callable[[Outcome], Awaitable[None]]:
        queue = iter(docs)

        async def get(outcome: Outcome) -> None:
            doc = next(queue)
            started = time.perf_counter()
            response = await self.s3.get_object(
                Bucket=self.bucket,
                Key=doc.object_key,
                SSECustomerKey=doc.key,
                SSECustomerAlgorithm="AES256",
            )
            body = response["Body"]
            try:
                received = await _compare(body.iter_chunks(CHUNK), payload)
            finally:
                body.close()
            outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
            outcome.nbytes += received

        return get

    # -- verdicts and clean-up ----------------------------------------------------------------

    async def _wait_for_verdicts(
        self, docs: list[Doc], wait_s: float, poll_s: float = POLL_S
    ) -> dict[str, dict[str, str]]:
        """Poll the tags in upload order, a batch at a time: scans finish roughly in that order,
        so a sweep stops at the first batch with a scan still running, keeping the polling
        light (it runs while the server is still scanning)."""
        found: dict[str, dict[str, str]] = {}
        pending = list(docs)
        give_up_at = time.monotonic() + wait_s
        while pending and time.monotonic() < give_up_at:
            pending = await self._sweep(pending, found)
            if pending:
                await asyncio.sleep(poll_s)
        return found

    async def _sweep(self, pending: list[Doc], found: dict[str, dict[str, str]]) -> list[Doc]:
        for start in range(0, len(pending), POLL_BATCH):
            batch = pending[start : start + POLL_BATCH]
            results = await asyncio.gather(*(self._tags(doc.object_key) for doc in batch))
            for doc, tags in zip(batch, results, strict=True):
                found[doc.object_key] = tags
            if any(_unfinished(tags) for tags in results):
                rest = pending[start + POLL_BATCH :]
                return [doc for doc in batch if _unfinished(found[doc.object_key])] + rest
        return []

    async def _tags(self, object_key: str) -> dict[str, str]:
        try:
            response = await self.s3.get_object_tagging(Bucket=self.bucket, Key=object_key)
        except Exception as error:  # a missing document counts as "no verdict"
            return {"error": type(error).__name__}
        return {tag["Key"]: tag["Value"] for tag in response["TagSet"]}

    # -- helpers ------------------------------------------------------------------------------

    def payload(self, size: int) -> bytes:
        """Incompressible bytes that libmagic calls application/pdf."""
        if size not in self.payloads:
            header = b"%PDF-1.4\n"
            self.payloads[size] = header + os.urandom(size - len(header))
        return self.payloads[size]

    def unique_payload(self, size: int) -> bytes:
        """Bytes of ``size`` no other document has (so scan-files counts each one apart)."""
        payload, header = self.payload(size), b"%PDF-1.4\n"
        mark = secrets.token_bytes(32)
        return header + mark + payload[len(header) + len(mark) :]

    def _client(self, origin: str) -> aiohttp.ClientSession:
        if origin not in self.http:
            self.http[origin] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL),
                timeout=aiohttp.ClientTimeout(total=300.0),
            )
        return self.http[origin]

    async def close(self) -> None:
        for client in self.http.values():
            await client.close()
        for context in (self._s3_context, self._sqs_context):
            if context is not None:
                await context.__aexit__(None, None, None)


class Failure(Exception):
    """A request answered, but not as it should have."""


async def closed_loop(
    count: int, concurrency: int, operation: Callable[[Outcome], Awaitable[None]]
) -> Outcome:
    """``count`` operations, ``concurrency`` workers each starting the next when one ends."""
    outcome = Outcome()
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            try:
                await operation(outcome)
            except Exception as error:
                outcome.errors.append(f"{type(error).__name__}: {error}"[:300])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    outcome.wall_s = time.perf_counter() - started
    return outcome


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _compare(chunks: Any, payload: bytes) -> int:
    """Read the body, check it is exactly ``payload``, answer its length."""
    received = 0
    async for chunk in chunks:
        end = received + len(chunk)
        if payload[received:end] != chunk:
            raise Failure(f"content differs at byte {received}")
        received = end
    if received != len(payload):
        raise Failure(f"got {received} bytes of {len(payload)}")
    return received


def _unfinished(tags: dict[str, str]) -> bool:
    return tags.get("av-status", IN_PROGRESS) == IN_PROGRESS


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _doc_from_201(
    variant: str, service_id: str, body: dict[str, Any], at_201: float, sha256: str = ""
) -> Doc:
    url = body["direct_file_url"]
    encoded = parse_qs(urlsplit(url).query)["key"][0]
    key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    object_key = f"api_link/{service_id}/{body['id']}"
    return Doc(variant, object_key, key, at_201, url, sha256)


async def serve() -> None:
    """Answer commands from stdin until ``quit`` or end of input."""
    loadgen = LoadGen()
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break
            answer = await dispatch(loadgen, cmd)
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        await loadgen.close()


async def dispatch(loadgen: LoadGen, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd["op"]
    if op == "init":
        return await loadgen.init(
            cmd["s3"], cmd["bucket"], cmd["token"], cmd["service_id"], cmd["watch"], cmd["queue"]
        )
    if op == "pass":
        return await loadgen.run_pass(cmd)
    if op == "outage_upload":
        return await loadgen.outage_upload(cmd)
    if op == "outage_verdicts":
        return await loadgen.outage_verdicts(cmd["wait_s"], cmd["poll_s"])
    if op == "watch":
        loadgen.watch = cmd["watch"] | {"loadgen": os.getpid()}
        return {}
    if op == "cleanup":
        return await loadgen.cleanup()
    raise ValueError(f"unknown op {op!r}")


if __name__ == "__main__":
    asyncio.run(serve())
