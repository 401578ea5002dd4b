"""The outage cell: scan-files down while uploads arrive at two dd-api instances, then back.

Two dd-api servers, each run with the production command and a TMPDIR of its own, share one
bucket and one scan queue on the moto server, and scan with a stand-in that is not running
(connection refused: a real outage rather than a 503). The uploads (unique bytes each, the two
sizes interleaved, the servers taken in turn) arrive at concurrency 16; scan-files comes back
once they are all answered and the outage has lasted ``down_s``. The cell then waits for every
document's verdict and for the queue to empty (so that a late second scan would be counted),
stops the stand-in, which writes its scans by SHA-256 (its --counts file), and reports:

* the peak RSS of each dd-api process (VmHWM, and the RSS sampled every 0.2 s);
* the peak bytes under each TMPDIR (files there, and removed files still held open);
* the peak of ``dd_scan_bytes_held`` (memory and disk), scraped from /metrics every second;
* seconds from scan-files' return to the last verdict (the latest ``av-timestamp``);
* the documents scanned more than once, and those never scanned, from the stand-in's counts;
* the verdicts (``error`` among them) and whether every document ended ``clean``.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from bench.procfs import bytes_under, peak_rss_mb, process_ticks, rss_mb
from dd_api.config import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from bench.run import LoadGen, Proc, Servers

KIB, MIB = 1024, 1024 * 1024
SAMPLE_S = 0.2  # /proc and the TMPDIRs (a 2 MiB upload's spool file lives about that long)
METRICS_EVERY = 5  # samples: /metrics and the queue's depth once a second
QUEUE_NAME = "dd-bench-outage"
MAX_RECEIVES = 100  # the redrive policy docs/scanning.md asks for


@dataclass(frozen=True)
class Outage:
    uploads: tuple[tuple[int, int], ...]  # (size, count)
    down_s: float  # scan-files stays down this long at least, and until the uploads are answered
    # settings changed from their defaults so that the run ends in reasonable time
    settings: tuple[tuple[str, str], ...] = ()
    concurrency: int = 16
    instances: int = 2
    verdict_wait_s: float = 900.0  # after the return: then missing verdicts are reported
    queue_wait_s: float = 180.0  # after the last verdict, for the queue to empty

    @property
    def count(self) -> int:
        return sum(count for _, count in self.uploads)


# The cell: a minute's outage while 1,500 uploads of 300 KiB and 100 of 2 MiB arrive.
FULL = Outage(uploads=((300 * KIB, 1500), (2 * MIB, 100)), down_s=60.0)
# A smoke run: a short outage, and the fast path's message delay (60 s by default, which
# alone would keep the run waiting a minute) and the queue's longest retry shortened.
QUICK = Outage(
    uploads=((300 * KIB, 40), (2 * MIB, 4)),
    down_s=8.0,
    settings=(("SCAN_QUEUE_DELAY_SECONDS", "10"), ("SCAN_RETRY_MAX_SECONDS", "5")),
    verdict_wait_s=120.0,
    queue_wait_s=60.0,
)


@dataclass
class Instance:
    name: str
    proc: Proc
    url: str
    tmp: Path


# -- sampling -------------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """/metrics as ``{'name{labels}': value}``."""
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def labelled(metrics: dict[str, float], name: str) -> dict[str, float]:
    """The series of ``name`` by their one label's value."""
    prefix = name + "{"
    return {
        key[len(prefix) :].split('"')[1]: value
        for key, value in metrics.items()
        if key.startswith(prefix)
    }


class Sampler:
    """Samples the instances and the queue in a thread until stopped; keeps the peaks."""

    def __init__(self, servers: Servers, instances: list[Instance], queue: str) -> None:
        self.servers, self.instances, self.queue = servers, instances, queue
        self.started = time.time()
        self.trace: list[dict[str, Any]] = []
        self.peaks: dict[str, dict[str, float]] = {
            i.name: {"rss_mb": 0.0, "tmp_bytes": 0, "held_memory": 0, "held_disk": 0}
            for i in instances
        }
        self.peak_queue = {"visible": 0, "in_flight": 0, "delayed": 0}
        self.failures: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outage-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            row = self._sample(with_metrics=number % METRICS_EVERY == 0)
            if row is not None:
                self.trace.append(row)
            number += 1
            self._stop.wait(SAMPLE_S)

    def _sample(self, *, with_metrics: bool) -> dict[str, Any] | None:
        row: dict[str, Any] = {"t": round(time.time() - self.started, 1)}
        for instance in self.instances:
            peak = self.peaks[instance.name]
            rss = rss_mb(instance.proc.pid)
            tmp = bytes_under(instance.tmp, [instance.proc.pid])
            peak["rss_mb"] = max(peak["rss_mb"], rss)
            peak["tmp_bytes"] = max(peak["tmp_bytes"], tmp)
            row.setdefault("rss_mb", []).append(round(rss, 1))
            row.setdefault("tmp_mib", []).append(round(tmp / MIB, 1))
            if not with_metrics:
                continue
            try:
                metrics = scrape(instance.url)
            except httpx.HTTPError as error:
                self.failures[f"/metrics: {type(error).__name__}"] += 1
                continue
            held = labelled(metrics, "dd_scan_bytes_held")
            for where in ("memory", "disk"):
                peak[f"held_{where}"] = max(peak[f"held_{where}"], held.get(where, 0))
                row.setdefault(f"held_{where}_kib", []).append(round(held.get(where, 0) / KIB))
            row.setdefault("slots_busy", []).append(metrics.get("dd_scan_slots_busy"))
            row.setdefault("scans_in_flight", []).append(metrics.get("dd_scans_in_flight"))
            row.setdefault("scans", []).append(sum(labelled(metrics, "dd_scans_total").values()))
        if not with_metrics:
            return None
        try:
            depth = self.servers.queue_depth(self.queue)
        except Exception as error:  # moto busy: a missed sample, not a failed run
            self.failures[f"queue depth: {type(error).__name__}"] += 1
            return row
        for state, value in depth.items():
            self.peak_queue[state] = max(self.peak_queue[state], value)
        row["queue"] = depth
        return row


# -- the cell -----------------------------------------------------------------------------------


def run(loadgen: LoadGen, servers: Servers, plan: Outage, s3_pid: int) -> dict[str, Any]:
    from bench.run import OtherLoad, cleanup, free_port

    port = free_port()  # where scan-files will come back; nothing listens there until then
    scan_url = f"http://127.0.0.1:{port}"
    counts_file = servers.work / "outage-scans.json"
    queue = servers.create_queue(QUEUE_NAME, max_receives=MAX_RECEIVES)
    instances = []
    for number in range(1, plan.instances + 1):
        name = f"dd-api-outage{number}"
        proc, url = servers.start_api(
            name, 0.0, None, env=dict(plan.settings), queue=queue, scan_url=scan_url
        )
        instances.append(Instance(name, proc, url, servers.tmp_dir(name)))
    pids = {i.name: i.proc.pid for i in instances} | {"s3": s3_pid}
    loadgen.ask(op="watch", watch=pids)
    idle = {i.name: rss_mb(i.proc.pid) for i in instances}
    others = OtherLoad(loadgen.pids())
    ticks = {"start": _ticks(pids)}
    sampler = Sampler(servers, instances, queue)
    sampler.start()
    began = time.time()
    print(
        f"outage cell: scan-files down; {plan.count} uploads at c{plan.concurrency} "
        f"to {plan.instances} dd-api servers",
        flush=True,
    )
    answer = loadgen.ask(
        op="outage_upload",
        base_urls=[i.url for i in instances],
        sizes=[list(pair) for pair in plan.uploads],
        concurrency=plan.concurrency,
    )
    uploaded = time.time()
    time.sleep(max(0.0, began + plan.down_s - time.time()))
    ticks["down"] = _ticks(pids)
    standin = servers.start_counting_scanner("scanfiles-outage", port, counts_file)
    back = time.time()
    print(f"  uploads answered after {uploaded - began:.0f} s; scan-files back", flush=True)
    found = loadgen.ask(op="outage_verdicts", wait_s=plan.verdict_wait_s, poll_s=1.0)
    verdicts_in = time.time()
    emptied = _wait_for_empty_queue(servers, queue, plan.queue_wait_s)
    dead_letters = sum(servers.queue_depth(servers.queues[f"{QUEUE_NAME}-dlq"]).values())
    sampler.stop()
    ticks["end"] = _ticks(pids)
    metrics = {i.name: scrape(i.url) for i in instances}
    hwm = {i.name: peak_rss_mb(i.proc.pid) for i in instances}
    other_cpu = others.percent()
    standin.stop()  # it writes its counts as it stops
    counts = json.loads(counts_file.read_text())
    for instance in instances:
        instance.proc.stop()
    cleanup(loadgen)
    timeline = {
        "uploads_answered_s": uploaded - began,
        "down_s": back - began,
        "verdicts_polled_in_s": verdicts_in - back,
        "queue_empty_after_return_s": None if emptied is None else emptied - back,
    }
    found["dead_letters"] = dead_letters
    return _result(
        plan, answer, found, counts, back, timeline, instances, sampler,
        idle, hwm, metrics, _cpu(ticks, pids), other_cpu,
    )  # fmt: skip


def _ticks(pids: dict[str, int]) -> dict[str, float]:
    return {name: process_ticks(pid) for name, pid in pids.items()}


def _cpu(ticks: dict[str, dict[str, float]], pids: dict[str, int]) -> dict[str, Any]:
    """CPU seconds of each process while scan-files was down, and after its return."""
    tck = os.sysconf("SC_CLK_TCK")
    return {
        phase: {name: round((ticks[end][name] - ticks[start][name]) / tck, 1) for name in pids}
        for phase, start, end in (("down", "start", "down"), ("back", "down", "end"))
    }


def _wait_for_empty_queue(servers: Servers, queue: str, wait_s: float) -> float | None:
    """When the queue held no message at all (visible, in flight or delayed), or None."""
    give_up_at = time.monotonic() + wait_s
    while time.monotonic() < give_up_at:
        if not any(servers.queue_depth(queue).values()):
            return time.time()
        time.sleep(1.0)
    return None


def _result(
    plan: Outage,
    answer: dict[str, Any],
    found: dict[str, Any],
    counts: dict[str, Any],
    back: float,
    timeline: dict[str, Any],
    instances: list[Instance],
    sampler: Sampler,
    idle: dict[str, float],
    hwm: dict[str, float],
    metrics: dict[str, dict[str, float]],
    cpu: dict[str, Any],
    other_cpu: float,
) -> dict[str, Any]:
    upload, documents = answer["upload"], found["documents"]
    latencies = sorted(upload["latencies_ms"])
    scans = counts["scans_by_checksum"]
    per_document = [scans.get(doc["sha256"], 0) for doc in documents]
    after_return = sorted(doc["verdict_at"] - back for doc in documents if doc["verdict_at"])
    statuses = Counter(doc["verdict"] for doc in documents)
    servers = {}
    for instance in instances:
        peak = sampler.peaks[instance.name]
        scraped = metrics[instance.name]
        servers[instance.name] = {
            "rss_after_start_mb": idle[instance.name],
            "peak_rss_mb": hwm[instance.name],
            "peak_rss_sampled_mb": peak["rss_mb"],
            "peak_tmp_bytes": peak["tmp_bytes"],
            "peak_held_memory_bytes": peak["held_memory"],
            "peak_held_disk_bytes": peak["held_disk"],
            "scans": labelled(scraped, "dd_scans_total"),
            "verdicts": labelled(scraped, "dd_scan_verdicts_total"),
            "scan_files_errors": labelled(scraped, "dd_scan_files_errors_total"),
            "uploads_201": sum(
                value
                for key, value in scraped.items()
                if key.startswith("dd_requests_total{")
                and 'method="POST"' in key
                and 'status="201"' in key
            ),
        }
    return {
        "uploads": [{"size": size, "count": count} for size, count in plan.uploads],
        "count": plan.count,
        "concurrency": plan.concurrency,
        "instances": plan.instances,
        "settings": dict(plan.settings),
        "budgets": {
            "SCAN_CONCURRENCY": Settings.SCAN_CONCURRENCY,
            "SCAN_BACKLOG_MEMORY_BYTES": Settings.SCAN_BACKLOG_MEMORY_BYTES,
            "SCAN_BACKLOG_DISK_BYTES": Settings.SCAN_BACKLOG_DISK_BYTES,
            "SCAN_MEMORY_THRESHOLD_BYTES": Settings.SCAN_MEMORY_THRESHOLD_BYTES,
        },
        "timeline": timeline,
        "upload": {
            "ok": upload["ok"],
            "errors": upload["errors"],
            "error_samples": upload["error_samples"],
            "wall_s": upload["wall_s"],
            "p50_ms": statistics.median(latencies) if latencies else None,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            if latencies
            else None,
            "max_ms": latencies[-1] if latencies else None,
        },
        "servers": servers,
        "verdicts": dict(statuses),
        "documents": len(documents),
        "all_clean": statuses.get("clean", 0) == plan.count,
        "last_verdict_after_return_s": after_return[-1] if after_return else None,
        "median_verdict_after_return_s": statistics.median(after_return) if after_return else None,
        "scans": {
            "total": sum(per_document),
            "documents_scanned_more_than_once": sum(1 for n in per_document if n > 1),
            "documents_never_scanned": sum(1 for n in per_document if n == 0),
            "most_scans_of_one_document": max(per_document, default=0),
            "requests_to_scan_files": counts["requests"],
        },
        "peak_queue": sampler.peak_queue,
        "max_receives": MAX_RECEIVES,
        "dead_letters": found["dead_letters"],
        "cpu_s": cpu,
        "other_cpu_pct": other_cpu,
        "sampling_failures": dict(sampler.failures),
        "trace": sampler.trace,
    }
