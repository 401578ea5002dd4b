"""Where an upload's time goes, step by step, on an otherwise idle dd-api.

    .venv/bin/python -m bench.steps [--count 30] [--patches no-expect]

Starts moto, a 0 s scan-files stand-in and dd-api as ``bench.experiments:app`` with the
``timings`` patch, then sends sequential uploads of 10 KiB, 1 MiB and 10 MiB with a pause after
each (so the previous upload's scan is over and nothing else runs), and prints the mean time of
each step as dd-api measured it: the multipart parse (which includes receiving the body), libmagic,
the document's PutObject and the scan message's SendMessage (each, and both together, in
parallel) and the whole view. Also, for comparison, a raw PutObject of the same bytes from this
process, alone and beside a SendMessage to another queue on the same moto server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aioboto3
import httpx

from bench.run import AWS, KIB, MIB, SERVICE_ID, TOKEN, Servers

SIZES = (10 * KIB, MIB, 10 * MIB)
PAUSE_S = 0.3
MESSAGE_BYTES = 400  # about a scan message's size (JSON, the wrapped key in base64)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__)
    parser.add_argument("--count", type=int, default=30, help="uploads per size")
    parser.add_argument("--patches", default="", help="more bench/experiments.py patches")
    args = parser.parse_args()
    patches = ",".join(filter(None, ["timings", args.patches]))
    with ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="dd-bench-steps-"))
        servers = Servers(Path(work), stack)  # its servers stop before the directory goes
        servers.start_s3()
        raw_queue = servers.create_queue("dd-bench-steps-raw")
        servers.start_scanner(0.0)
        _, url = servers.start_api(
            "dd-api-steps", 0.0, 4, app="bench.experiments:app", env={"DD_BENCH_PATCHES": patches}
        )
        for size in SIZES:
            print(f"\n{size // KIB} KiB, {args.count} sequential uploads (patches: {patches})")
            client_p50 = upload_steps(url, size, args.count)
            print(f"  {'client: request to 201 (p50)':34s} {client_p50:8.2f} ms")
            raw = asyncio.run(raw_puts(servers.s3, servers.bucket, raw_queue, size, args.count))
            for name, p50 in raw.items():
                print(f"  {name:34s} {p50:8.2f} ms")


def upload_steps(url: str, size: int, count: int) -> float:
    payload = b"%PDF-1.4\n" + os.urandom(size - 9)
    latencies = []
    with httpx.Client(timeout=60) as client:
        client.get(f"{url}/_bench/timings")  # reset
        for _ in range(count):
            started = time.perf_counter()
            response = client.post(
                f"{url}/services/{SERVICE_ID}/documents",
                files={"document": ("bench.pdf", payload, "application/pdf")},
                data={"filename": "bench.pdf", "sending_method": "link"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            time.sleep(PAUSE_S)
        for name, step in client.get(f"{url}/_bench/timings").json().items():
            print(f"  {name:34s} {step['mean_ms']:8.2f} ms  (x{step['count']})")
    return statistics.median(latencies)


async def raw_puts(
    endpoint: str, bucket: str, queue: str, size: int, count: int
) -> dict[str, float]:
    payload = b"%PDF-1.4\n" + os.urandom(size - 9)
    message = "x" * MESSAGE_BYTES
    session = aioboto3.Session(
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS["AWS_DEFAULT_REGION"],
    )
    async with (
        session.client("s3", endpoint_url=endpoint) as s3,
        session.client("sqs", endpoint_url=endpoint) as sqs,
    ):

        async def put() -> None:
            await s3.put_object(Bucket=bucket, Key=f"raw/{secrets.token_hex(8)}", Body=payload)

        async def send() -> None:
            await sqs.send_message(QueueUrl=queue, MessageBody=message, DelaySeconds=60)

        found = {}
        for name, calls in (("PutObject", (put,)), ("PutObject + SendMessage", (put, send))):
            latencies = []
            for _ in range(count):
                started = time.perf_counter()
                await asyncio.gather(*(call() for call in calls))
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(PAUSE_S / 3)
            found[f"raw: {name} (p50)"] = statistics.median(latencies)
        return found


if __name__ == "__main__":
    main()
