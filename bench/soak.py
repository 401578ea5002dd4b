"""Soak test: mixed traffic at concurrency 32 against dd-api run as in production.

    .venv/bin/python -m bench.soak                 # 5 minutes (make soak)
    .venv/bin/python -m bench.soak --minutes 1     # shorter

Starts moto (S3), a scan-files stand-in answering after 0.2 s and dd-api with the production
command, then runs 32 closed-loop clients, each repeating: upload (10 KiB to 1 MiB), download
through the short link, poll scan-verdict until it is final, then delete (half the time) or
download again through the direct link. It reports errors and latency percentiles per
30-second window, and the server's RSS and open file descriptors at the start and the end:
flat numbers mean no leak. Writes bench/results/soak.md and soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.procfs import rss_mb
from bench.run import RESULTS, SERVICE_ID, TOKEN, Servers

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONCURRENCY = 32
WINDOW_S = 30.0
SIZES = (10 * 1024, 100 * 1024, 1024 * 1024)
EXPECTED = {"upload": {201}, "download": {200}, "verdict": {200, 428}, "delete": {200}}


@dataclass
class Sample:
    at: float
    op: str
    ms: float
    ok: bool


@dataclass
class Soak:
    api: str
    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def call(self, op: str, request: Awaitable[httpx.Response]) -> httpx.Response | None:
        begun = time.monotonic()
        try:
            response = await request
        except httpx.HTTPError as error:
            self._record(op, begun, False, f"{op}: {type(error).__name__}")
            return None
        ok = response.status_code in EXPECTED[op]
        self._record(op, begun, ok, None if ok else f"{op}: HTTP {response.status_code}")
        return response

    def _record(self, op: str, begun: float, ok: bool, failure: str | None) -> None:
        now = time.monotonic()
        self.samples.append(Sample(begun - self.started, op, (now - begun) * 1000, ok))
        if failure and len(self.failures) < 50:
            self.failures.append(failure)


def local(url: str, api: str) -> str:
    parts = urlsplit(url)
    return f"{api}{parts.path}?{parts.query}"


async def one_round(soak: Soak, client: httpx.AsyncClient, rng: random.Random) -> None:
    content = b"%PDF-1.4\n" + rng.randbytes(rng.choice(SIZES))
    response = await soak.call(
        "upload",
        client.post(
            f"{soak.api}/services/{SERVICE_ID}/documents",
            files={"document": ("document", content)},
            data={"filename": "soak.pdf", "sending_method": "link"},
            headers=AUTH,
        ),
    )
    if response is None or response.status_code != 201:
        return
    document = response.json()["document"]
    await soak.call("download", client.get(local(document["url"], soak.api)))
    verdict_url = f"{soak.api}/services/{SERVICE_ID}/documents/{document['id']}/scan-verdict"
    for _ in range(40):
        verdict = await soak.call("verdict", client.post(verdict_url, headers=AUTH))
        if verdict is None or verdict.status_code != 428:
            break
        await asyncio.sleep(0.25)
    if rng.random() < 0.5:
        delete_url = local(document["direct_file_url"], soak.api)
        await soak.call("delete", client.delete(delete_url, headers=AUTH))
    else:
        await soak.call("download", client.get(local(document["direct_file_url"], soak.api)))


async def client_loop(soak: Soak, stop_at: float, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < stop_at:
            await one_round(soak, client, rng)


def resources(pid: int) -> dict[str, float]:
    return {"rss_mb": rss_mb(pid), "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def sample_resources(pid: int, stop_at: float, into: list[dict[str, float]]) -> None:
    started = time.monotonic()
    while time.monotonic() < stop_at:
        into.append({"at_s": round(time.monotonic() - started, 1), **resources(pid)})
        await asyncio.sleep(5)


async def drive(api: str, pid: int, seconds: float) -> dict[str, Any]:
    soak = Soak(api)
    stop_at = time.monotonic() + seconds
    trace: list[dict[str, float]] = []
    idle = resources(pid)
    await asyncio.gather(
        sample_resources(pid, stop_at, trace),
        *(client_loop(soak, stop_at, seed) for seed in range(CONCURRENCY)),
    )
    await asyncio.sleep(3)  # let the last scans land before the final reading
    # Compare under load, once warmed up (pools filled), with the end of the run.
    warm = next((t for t in trace if t["at_s"] >= WINDOW_S), trace[0])
    return {
        "windows": windows(soak.samples),
        "idle": idle,
        "start": warm,
        "end": trace[-1],
        "after": resources(pid),
        "trace": trace,
        "errors": sum(not s.ok for s in soak.samples),
        "requests": len(soak.samples),
        "failures": soak.failures,
    }


def windows(samples: list[Sample]) -> list[dict[str, Any]]:
    result = []
    last = int(max((s.at for s in samples), default=0) // WINDOW_S)
    for index in range(last + 1):
        chosen = [s for s in samples if int(s.at // WINDOW_S) == index]
        row: dict[str, Any] = {"from_s": index * WINDOW_S, "requests": len(chosen)}
        row["errors"] = sum(not s.ok for s in chosen)
        for op in EXPECTED:
            latencies = sorted(s.ms for s in chosen if s.op == op)
            if latencies:
                row[op] = {
                    "count": len(latencies),
                    "p50_ms": round(statistics.median(latencies), 1),
                    "p99_ms": round(
                        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1
                    ),
                }
        result.append(row)
    return result


def markdown(data: dict[str, Any]) -> str:
    start, end = data["start"], data["end"]
    lines = [
        f"# dd-api soak test: {data['date']}",
        "",
        f"Command: `{data['command']}`; {CONCURRENCY} clients for {data['seconds']:.0f} s; "
        "scan-files stand-in at 0.2 s; S3 on moto; dd-api with the production command.",
        "",
        f"- Requests: {data['requests']}, errors: {data['errors']}",
        f"- dd-api RSS: {start['rss_mb']:.1f} MB after warm-up ({start['at_s']} s), "
        f"{end['rss_mb']:.1f} MB at the end ({end['at_s']} s); "
        f"{data['idle']['rss_mb']:.1f} MB before any traffic, "
        f"{data['after']['rss_mb']:.1f} MB once it stopped",
        f"- dd-api open file descriptors: {start['open_fds']:.0f} after warm-up, "
        f"{end['open_fds']:.0f} at the end; {data['idle']['open_fds']:.0f} before any traffic, "
        f"{data['after']['open_fds']:.0f} once it stopped",
        "",
        "| from s | requests | errors | upload p50 / p99 ms | download p50 / p99 ms "
        "| verdict p50 / p99 ms | delete p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["windows"]:
        cells = [
            f"{row[op]['p50_ms']} / {row[op]['p99_ms']}" if op in row else "-" for op in EXPECTED
        ]
        lines.append(
            f"| {row['from_s']:.0f} | {row['requests']} | {row['errors']} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "RSS and open descriptors every 5 s:", "", "| at s | RSS MB | open fds |"]
    lines.append("|---|---|---|")
    lines += [f"| {t['at_s']} | {t['rss_mb']:.1f} | {t['open_fds']:.0f} |" for t in data["trace"]]
    if data["failures"]:
        lines += ["", "First failures:", ""] + [f"- {failure}" for failure in data["failures"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="dd-soak-") as work:
        servers = Servers(Path(work), stack)
        servers.start_s3()
        servers.start_scanner(0.2)
        proc, api = servers.start_api("soak-api", 0.2, 4)
        data = asyncio.run(drive(api, proc.pid, args.minutes * 60))
    data |= {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python -m bench.soak --minutes {args.minutes:g}",
        "seconds": args.minutes * 60,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(data, indent=2))
    (RESULTS / "soak.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
