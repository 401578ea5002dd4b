"""Benchmark orchestration: start the servers on 127.0.0.1, drive bench/loadgen.py, report.

    .venv/bin/python -m bench.run            # full run (about 10 minutes), writes bench/results/
    .venv/bin/python -m bench.run --quick    # smoke run (about 1 min), writes bench/results/quick/

Processes: one moto server (S3 and SQS), two scan-files stand-ins (delay 0 s and 2 s), two
dd-api servers run with the production command (one per stand-in, each with its own scan
queue), and the load generator. The backlog burst then runs on a fresh dd-api process, and the
outage cell on two more sharing one queue (bench/outage.py). See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import IO, Any

import boto3
import httpx

from bench import outage, profiles, report
from bench.procfs import busy_ticks, peak_rss_mb, process_ticks, reset_peak_rss, rss_mb
from dd_api.queue import new_queue_key
from tests.helpers import stop_process

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
KIB, MIB = 1024, 1024 * 1024
TOKEN = "bench-token"  # a throwaway token for the local servers
SCAN_KEY = "bench-scan-key"
SERVICE_ID = "00000000-0000-0000-0000-000000000000"
RAW_QUEUE = "dd-bench-raw"  # the SendMessage of the raw floor's second variant
# The cells scan 16 at a time (more background work beside the uploads than the default 4,
# and a 2 s backlog that drains within the run); the burst uses the default, 4, as specified.
CELL_SCAN_CONCURRENCY = 16
BURST_SCAN_CONCURRENCY = 4
SLOW_SCAN_S = 2.0
AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PACKAGES = ("quart", "hypercorn", "aioboto3", "aiobotocore", "botocore", "httpx", "moto")


@dataclass(frozen=True)
class Cell:
    size: int
    concurrency: int
    count: int  # uploads per variant per pass

    @property
    def label(self) -> str:
        return report.cell_label(self.size, self.concurrency)


@dataclass(frozen=True)
class Plan:
    mode: str
    passes: int
    cells: tuple[Cell, ...]
    burst_uploads: int
    warm_up_sizes: list[int]
    warm_up_count: int
    outage: outage.Outage
    burst_size: int = 5 * MIB
    burst_concurrency: int = 16


def plan(quick: bool, passes: int | None) -> Plan:
    if quick:
        # every code path, too few requests to mean anything
        counts = {(10 * KIB, 1): 4, (10 * KIB, 16): 8, (10 * MIB, 1): 2, (10 * MIB, 16): 4}
        return Plan("quick", passes or 2, _cells(counts), 8, [10 * KIB], 2, outage.QUICK)
    counts = {(10 * KIB, 1): 40, (10 * KIB, 16): 64, (MIB, 1): 30, (MIB, 16): 48}
    counts |= {(10 * MIB, 1): 16, (10 * MIB, 16): 32}
    sizes = [10 * KIB, MIB, 10 * MIB]
    return Plan("full", passes or 4, _cells(counts), 100, sizes, 4, outage.FULL)


def _cells(counts: dict[tuple[int, int], int]) -> tuple[Cell, ...]:
    return tuple(Cell(size, conc, count) for (size, conc), count in counts.items())


# -- processes ----------------------------------------------------------------------------------


class Proc:
    """A server process we started, its log file, and how to stop it."""

    def __init__(
        self, name: str, argv: list[str], log: Path, env: dict[str, str], cpus: set[int] | None
    ) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        pin(self.popen.pid, cpus)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); see {self.log}")
            try:
                httpx.get(url, timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout} s")

    def stop(self) -> None:
        stop_process(self.popen, 30)


def pin(pid: int, cpus: set[int] | None) -> None:
    """Keep a process on these CPUs (set before it starts any thread, which inherit it)."""
    if cpus is not None:
        os.sched_setaffinity(pid, cpus)


@dataclass(frozen=True)
class Cores:
    """``--split-cores``: dd-api on CPUs of its own, everything else on the others."""

    api: set[int] | None = None
    rest: set[int] | None = None

    @classmethod
    def split(cls) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--split-cores needs at least 2 CPUs")
        half = len(cpus) // 2
        return cls(api=set(cpus[half:]), rest=set(cpus[:half]))

    def describe(self) -> str | None:
        if self.api is None or self.rest is None:
            return None
        others = "S3, stand-ins and load generator"
        return f"dd-api on CPU {_cpus(self.api)}; {others} on CPU {_cpus(self.rest)}"


def _cpus(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | AWS


class Servers:
    """Starts and stops everything but the load generator."""

    def __init__(self, work: Path, stack: ExitStack, cores: Cores | None = None) -> None:
        self.work, self.stack, self.cores = work, stack, cores or Cores()
        self.s3 = ""  # moto's endpoint: S3 and SQS
        self.bucket = "dd-bench"
        self.scanners: dict[float, str] = {}
        self.procs: list[Proc] = []
        self.queues: dict[str, str] = {}  # name: URL
        self.queue_key = new_queue_key()  # every dd-api here encrypts its messages with it
        self.code: dict[str, str] = {}  # the src/ digest each dd-api server started from
        self._sqs: Any = None

    def _start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, *, api: bool = False
    ) -> Proc:
        cpus = self.cores.api if api else self.cores.rest
        proc = Proc(name, argv, self.work / f"{name}.log", env or base_env(), cpus)
        self.stack.callback(proc.stop)
        self.procs.append(proc)
        return proc

    def start_s3(self) -> Proc:
        port = free_port()
        argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        # the queues are purged after every cell: more often than SQS's one purge a minute
        env = base_env() | {"MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR": "false"}
        proc = self._start("moto", argv, env)
        self.s3 = f"http://127.0.0.1:{port}"
        proc.wait_ready(self.s3)
        boto3.client("s3", endpoint_url=self.s3, **_boto_args()).create_bucket(Bucket=self.bucket)
        self._sqs = boto3.client("sqs", endpoint_url=self.s3, **_boto_args())
        return proc

    def create_queue(self, name: str, *, max_receives: int | None = None) -> str:
        """An SQS queue on the moto server; its URL. With ``max_receives``, a message received
        that many times goes to the queue ``<name>-dlq`` (a redrive policy, as in production)."""
        attributes = {}
        if max_receives is not None:
            dlq = self.create_queue(f"{name}-dlq")
            arn = self._sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
            policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"]}
            policy["maxReceiveCount"] = str(max_receives)
            attributes["RedrivePolicy"] = json.dumps(policy)
        url: str = self._sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self.queues[name] = url
        return url

    def queue_depth(self, url: str) -> dict[str, int]:
        answer = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(QUEUE_DEPTH))
        attributes = answer["Attributes"]
        return {state: int(attributes.get(name, 0)) for name, state in QUEUE_DEPTH.items()}

    def purge_queues(self) -> None:
        """Drop the messages left in every queue: the delayed messages of fast-path scans that
        are over, whose documents the clean-up is about to delete."""
        for url in self.queues.values():
            self._sqs.purge_queue(QueueUrl=url)

    def start_scanner(self, delay: float) -> Proc:
        port = free_port()
        argv = [sys.executable, "-m", "tests.support.scanfiles", "--port", str(port)]
        argv += ["--api-key", SCAN_KEY, "--delay", f"{delay:g}"]
        proc = self._start(f"scanfiles-{delay:g}s", argv)
        self.scanners[delay] = f"http://127.0.0.1:{port}"
        proc.wait_ready(f"{self.scanners[delay]}/healthcheck")
        return proc

    def start_counting_scanner(self, name: str, port: int, counts: Path) -> Proc:
        """A 0 s stand-in on ``port`` that writes its scans by SHA-256 to ``counts`` when it
        stops."""
        argv = [sys.executable, "-m", "tests.support.scanfiles", "--port", str(port)]
        argv += ["--api-key", SCAN_KEY, "--counts", str(counts)]
        proc = self._start(name, argv)
        proc.wait_ready(f"http://127.0.0.1:{port}/healthcheck")
        return proc

    def tmp_dir(self, name: str) -> Path:
        """The TMPDIR of the dd-api server ``name``."""
        return self.work / f"{name}-tmp"

    def start_api(
        self,
        name: str,
        scan_delay: float,
        scan_concurrency: int | None,
        *,
        app: str = "dd_api.asgi:app",
        env: dict[str, str] | None = None,
        queue: str | None = None,
        scan_url: str | None = None,
    ) -> tuple[Proc, str]:
        """dd-api exactly as in production, bound to a loopback port: its scan queue is
        ``queue`` (a URL), by default one of its own; it scans with the stand-in of that
        delay, or at ``scan_url``; ``scan_concurrency`` None keeps the default."""
        port = free_port()
        tmp = self.tmp_dir(name)
        tmp.mkdir()
        env = (
            base_env()
            | (env or {})
            | {
                "NOTIFY_ENVIRONMENT": "production",
                "DOCUMENT_STORE": "s3",
                "DOCUMENTS_BUCKET": self.bucket,
                "AWS_ENDPOINT_URL_S3": self.s3,
                "AWS_ENDPOINT_URL_SQS": self.s3,
                "SCAN_QUEUE_URL": queue or self.create_queue(name),
                "SCAN_QUEUE_KEY": self.queue_key,
                "AUTH_TOKENS": TOKEN,
                "ANTIVIRUS_API_HOST": scan_url or self.scanners[scan_delay],
                "ANTIVIRUS_API_KEY": SCAN_KEY,
                "TMPDIR": str(tmp),  # large uploads are spooled here
            }
        )
        if scan_concurrency is not None:
            env["SCAN_CONCURRENCY"] = str(scan_concurrency)
        argv = [str(BIN / "hypercorn"), "-c", "hypercorn.toml", app]
        self.code[name] = src_fingerprint()  # what it loads as it starts
        proc = self._start(name, [*argv, "--bind", f"127.0.0.1:{port}"], env, api=True)
        url = f"http://127.0.0.1:{port}"
        proc.wait_ready(f"{url}/_status")
        return proc, url


QUEUE_DEPTH = {
    "ApproximateNumberOfMessages": "visible",
    "ApproximateNumberOfMessagesNotVisible": "in_flight",
    "ApproximateNumberOfMessagesDelayed": "delayed",
}


def _boto_args() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_DEFAULT_REGION"],
    }


class LoadGen:
    """The load generator process, one JSON command and answer per line."""

    def __init__(self, work: Path, stack: ExitStack, servers: Servers) -> None:
        self.servers = servers
        log = (work / "loadgen.log").open("wb")
        stack.callback(log.close)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            cwd=ROOT,
            env=base_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        pin(self.popen.pid, servers.cores.rest)
        stack.callback(self.close)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        stdin.write(json.dumps(cmd) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({self.popen.poll()}); see loadgen.log")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def pids(self) -> list[int]:
        """The benchmark's own processes: this one, the load generator, the servers."""
        return [os.getpid(), self.popen.pid, *(proc.pid for proc in self.servers.procs)]

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        return self.popen.stdin, self.popen.stdout

    def close(self) -> None:
        if self.popen.poll() is None:
            try:
                self.ask_quit()
                self.popen.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.popen.kill()

    def ask_quit(self) -> None:
        stdin, _ = self._pipes()
        stdin.write(json.dumps({"op": "quit"}) + "\n")
        stdin.flush()


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Api:
    variant: str
    proc: Proc
    url: str


def rotate[T](items: list[T], by: int) -> list[T]:
    by %= len(items)
    return items[by:] + items[:by]


@dataclass(frozen=True)
class Target:
    """Where a variant's uploads go, and which processes' CPU time it is charged."""

    variant: str
    url: str | None  # None: raw S3 (and SQS) from the load generator
    send: bool = False  # raw: also SendMessage a scan message, in parallel with the PutObject
    download: bool = True


def targets(apis: list[Api]) -> list[Target]:
    found = [Target(api.variant, api.url) for api in apis]
    return [*found, Target("raw", None), Target("rawq", None, send=True, download=False)]


def run_pass(loadgen: LoadGen, target: Target, **load: Any) -> dict[str, Any]:
    others = OtherLoad(loadgen.pids())
    answer = loadgen.ask(
        op="pass", variant=target.variant, base_url=target.url, send=target.send,
        download=target.download, wait_s=drain_wait(load["count"], CELL_SCAN_CONCURRENCY),
        **load,
    )  # fmt: skip
    stats = report.pass_stats(answer, server=target.variant if target.url else None)
    stats["other_cpu_pct"] = others.percent()
    return stats


class OtherLoad:
    """The CPU that processes outside the benchmark used while a pass ran, as a percentage of
    all the machine's cores: the noise a pass was measured under."""

    def __init__(self, ours: list[int]) -> None:
        self.ours = ours
        self.started = time.monotonic()
        self.busy, self.own = busy_ticks(), self._own_ticks()

    def _own_ticks(self) -> float:
        return sum(process_ticks(pid) for pid in self.ours)

    def percent(self) -> float:
        wall = time.monotonic() - self.started
        others = (busy_ticks() - self.busy) - (self._own_ticks() - self.own)
        capacity = wall * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        return max(0.0, 100 * others / capacity) if capacity else 0.0


def cleanup(loadgen: LoadGen) -> None:
    """Empty the queues (the delayed messages of scans that are over), then the bucket."""
    loadgen.servers.purge_queues()
    loadgen.ask(op="cleanup")


def warm_up(loadgen: LoadGen, all_targets: list[Target], sizes: list[int], count: int) -> None:
    """Open connection pools and load lazy imports before anything is measured."""
    for size in sizes:
        for target in all_targets:
            run_pass(loadgen, target, size=size, concurrency=count, count=count)
    cleanup(loadgen)


def run_cell(
    loadgen: LoadGen, apis: list[Api], all_targets: list[Target], cell: Cell, passes: int
) -> dict[str, Any]:
    for api in apis:
        reset_peak_rss(api.proc.pid)
    per_pass: dict[str, list[dict[str, Any]]] = {t.variant: [] for t in all_targets}
    load = {"size": cell.size, "concurrency": cell.concurrency, "count": cell.count}
    for number in range(passes):
        for target in rotate(all_targets, number):
            per_pass[target.variant].append(run_pass(loadgen, target, **load))
        print(f"  {cell.label} pass {number + 1}/{passes}: {_brief(per_pass)}", flush=True)
    result = _cell_result(cell, passes, apis, per_pass)
    cleanup(loadgen)
    return result


def _brief(per_pass: dict[str, list[dict[str, Any]]]) -> str:
    latest = {variant: passes[-1]["p50_ms"] for variant, passes in per_pass.items()}
    return ", ".join(f"{variant} p50 {p50:.1f} ms" for variant, p50 in latest.items())


def drain_wait(uploads: int, scan_concurrency: int) -> float:
    """How long to wait for verdicts before counting the missing ones as errors."""
    return 60 + uploads * SLOW_SCAN_S / scan_concurrency


def _cell_result(
    cell: Cell,
    passes: int,
    apis: list[Api],
    per_pass: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    for variant, stats in per_pass.items():
        variants[variant] = {"passes": stats, "summary": report.summarize(stats)}
    for api in apis:
        variants[api.variant]["verdicts"] = report.pooled_verdicts(per_pass[api.variant])
        variants[api.variant]["peak_rss_mb"] = peak_rss_mb(api.proc.pid)
    return {
        "label": cell.label,
        "size": cell.size,
        "concurrency": cell.concurrency,
        "count": cell.count,
        "passes": passes,
        "variants": variants,
    }


def run_burst(loadgen: LoadGen, servers: Servers, plan: Plan, s3_pid: int) -> dict[str, Any]:
    proc, url = servers.start_api("dd-api-burst", SLOW_SCAN_S, BURST_SCAN_CONCURRENCY)
    loadgen.ask(op="watch", watch={"burst": proc.pid, "s3": s3_pid})
    loadgen.ask(
        op="pass", variant="burst", base_url=url, size=10 * KIB, concurrency=1, count=2,
        download=True, wait_s=30,
    )  # fmt: skip
    reset_peak_rss(proc.pid)
    before = rss_mb(proc.pid)
    started = time.monotonic()
    answer = loadgen.ask(
        op="pass", variant="burst", base_url=url, size=plan.burst_size,
        concurrency=plan.burst_concurrency, count=plan.burst_uploads, download=False,
        wait_s=drain_wait(plan.burst_uploads, BURST_SCAN_CONCURRENCY),
    )  # fmt: skip
    drained = time.monotonic() - started
    peak = peak_rss_mb(proc.pid)
    proc.stop()  # free the CPU for what follows
    cleanup(loadgen)
    upload = report.pass_stats(answer, server="burst")
    return {
        "uploads": plan.burst_uploads,
        "size": plan.burst_size,
        "concurrency": plan.burst_concurrency,
        "scan_delay_s": SLOW_SCAN_S,
        "scan_concurrency": BURST_SCAN_CONCURRENCY,
        "upload": upload,
        "errors": upload["upload_errors"],
        "verdicts": report.pooled_verdicts([upload]),
        "peak_rss_mb": peak,
        "rss_before_mb": before,
        "drained_after_s": drained,
    }


# -- metadata -----------------------------------------------------------------------------------


def machine(load_before: str) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_before": load_before,
        "load_after": _load(),
    }


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def src_fingerprint() -> str:
    """A digest of the code the servers run (src/ and compat/): the checkout is shared, and a
    change in the middle of a run would otherwise go unnoticed."""
    digest = hashlib.sha256()
    for folder in ("src", "compat"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def git_state() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "src").splitlines() if line]
    if not changed:
        return f"commit {commit}, src/ clean"
    return f"commit {commit} + uncommitted changes in {', '.join(changed)}"


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, about a minute")
    parser.add_argument("--passes", type=int, help="passes per cell (default 4, quick 2)")
    parser.add_argument(
        "--only", help="run only the cells matching one of these, e.g. '10 MiB c1,c16'"
    )
    parser.add_argument("--no-burst", action="store_true", help="skip the backlog burst")
    parser.add_argument("--no-outage", action="store_true", help="skip the outage cell")
    parser.add_argument(
        "--outage-only", action="store_true", help="run the outage cell alone (no cells, no burst)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results directory (default: bench/results, or its quick/ or partial/ subdirectory)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server logs")
    parser.add_argument(
        "--py-spy",
        metavar="VARIANT",
        help="profile that dd-api server (scan0, scan2 or patched), or the S3 server (s3), "
        "in every cell with py-spy",
    )
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="run dd-api on half the CPUs and everything else on the other half",
    )
    parser.add_argument(
        "--patches",
        help="also run a 'patched' variant with these bench/experiments.py patches",
    )
    parser.add_argument(
        "--patched-scan-delay",
        type=float,
        choices=(0.0, SLOW_SCAN_S),
        default=0.0,
        help="which stand-in the patched variant scans with (default 0 s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    the_plan = plan(args.quick, args.passes)
    if args.outage_only:
        args.no_burst, args.no_outage = True, False
        the_plan = replace(the_plan, cells=(), mode=f"{the_plan.mode} (outage cell only)")
    elif args.only:
        cells = tuple(cell for cell in the_plan.cells if selected(cell, args.only))
        the_plan = replace(the_plan, cells=cells, mode=f"{the_plan.mode} (partial)")
    signal.signal(signal.SIGTERM, _interrupt)  # so the servers are stopped on the way out
    out = args.out or default_out(args)
    command = shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])])
    with workdir(args.keep_logs) as work:
        cores = Cores.split() if args.split_cores else Cores()
        options = Options(
            args.no_burst,
            args.patches,
            args.py_spy,
            out,
            cores,
            args.patched_scan_delay,
            skip_outage=args.no_outage,
        )
        result = execute(the_plan, work, command, options)
    json_path, md_path = report.write(result, out, "results")
    print(md_path.read_text())
    print(f"wrote {md_path} and {json_path}")
    missed = [check for check in result["targets"] if check["met"] is False]
    return 1 if args.strict and missed else 0


def selected(cell: Cell, only: str) -> bool:
    """``--only '10 MiB,c1'``: cells whose label has every word of one of the items."""
    words = set(cell.label.split())
    return any(set(item.split()) <= words for item in only.split(","))


def default_out(args: argparse.Namespace) -> Path:
    """Only a complete default run lands in bench/results/ itself (the committed one)."""
    if args.quick:
        return RESULTS / "quick"
    if args.only or args.no_burst or args.no_outage or args.outage_only:
        return RESULTS / "partial"
    if args.patches or args.split_cores:
        return RESULTS / "partial"
    return RESULTS


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dd-bench-"))
    failed = True
    try:
        yield path
        failed = False
    finally:
        if keep or failed:
            print(f"server logs kept in {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Options:
    skip_burst: bool
    patches: str | None
    profile: str | None  # variant whose server py-spy samples
    out: Path
    cores: Cores
    patched_scan_delay: float = 0.0
    skip_outage: bool = False


def execute(the_plan: Plan, work: Path, command: str, options: Options) -> dict[str, Any]:
    patches = options.patches
    started_at, started, load_before = datetime.now(UTC), time.monotonic(), _load()
    code = git_state()  # what the servers are started from
    fingerprint = src_fingerprint()
    pin(os.getpid(), options.cores.rest)
    with ExitStack() as stack:
        servers = Servers(work, stack, options.cores)
        s3 = servers.start_s3()
        servers.start_scanner(0.0)
        servers.start_scanner(SLOW_SCAN_S)
        apis = [
            Api("scan0", *servers.start_api("dd-api-scan0", 0.0, CELL_SCAN_CONCURRENCY)),
            Api("scan2", *servers.start_api("dd-api-scan2", SLOW_SCAN_S, CELL_SCAN_CONCURRENCY)),
        ]
        if patches:
            patched = start_patched(servers, patches, options.patched_scan_delay)
            apis.append(Api("patched", *patched))
        loadgen = LoadGen(work, stack, servers)
        watch = {api.variant: api.proc.pid for api in apis} | {"s3": s3.pid}
        raw_queue = servers.create_queue(RAW_QUEUE)
        loadgen.ask(op="init", s3=servers.s3, bucket=servers.bucket, token=TOKEN,
                    service_id=SERVICE_ID, watch=watch, queue=raw_queue)  # fmt: skip
        all_targets = targets(apis)
        baseline = {}
        cells = []
        if the_plan.cells:
            print(f"servers up in {time.monotonic() - started:.1f} s; warming up", flush=True)
            warm_up(loadgen, all_targets, the_plan.warm_up_sizes, the_plan.warm_up_count)
            baseline = {api.variant: rss_mb(api.proc.pid) for api in apis}
        for cell in the_plan.cells:
            with profiled(apis, s3, cell, options):
                cells.append(run_cell(loadgen, apis, all_targets, cell, the_plan.passes))
        print(f"cells done after {time.monotonic() - started:.0f} s", flush=True)
        for api in apis:  # free the CPU for the burst and the outage cell
            api.proc.stop()
        burst = None if options.skip_burst else run_burst(loadgen, servers, the_plan, s3.pid)
        outage_cell = None
        if not options.skip_outage:
            outage_cell = outage.run(loadgen, servers, the_plan.outage, s3.pid)
            print(f"outage cell done after {time.monotonic() - started:.0f} s", flush=True)
    meta = {
        "started": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "mode": the_plan.mode,
        "passes": the_plan.passes,
        "duration_s": time.monotonic() - started,
        "machine": machine(load_before),
        "versions": versions(),
        "git": code,
        "src_sha256": fingerprint,
        "src_sha256_at_end": src_fingerprint(),
        "server_code": servers.code,
        "servers": _servers_note(baseline),
        "patches": patches,
        "patched_scan_delay_s": options.patched_scan_delay,
        "cores": options.cores.describe(),
    }
    result = {"meta": meta, "cells": cells, "burst": burst, "outage": outage_cell}
    result["targets"] = report.check_targets(cells, burst, outage_cell)
    return result


@contextmanager
def profiled(apis: list[Api], s3: Proc, cell: Cell, options: Options) -> Iterator[None]:
    """Run py-spy on the chosen server during the cell, then write a summary of it."""
    if options.profile is None:
        yield
        return
    if options.profile == "s3":
        pid, what = s3.pid, "the S3 server (moto)"
    else:
        server = next((api for api in apis if api.variant == options.profile), None)
        if server is None:
            raise SystemExit(f"--py-spy {options.profile}: no such server in this run")
        pid, what = server.proc.pid, f"dd-api ({report.LABELS[server.variant]})"
    name = f"profile-{options.profile}-{cell.label.replace(' ', '')}"
    options.out.mkdir(parents=True, exist_ok=True)
    stacks = options.out / f"{name}.txt"
    with profiles.recording(pid, stacks):
        yield
    title = f"py-spy: {what} during {cell.label}"
    (options.out / f"{name}.md").write_text(profiles.summarize(stacks, title))


def start_patched(servers: Servers, patches: str, scan_delay: float) -> tuple[Proc, str]:
    return servers.start_api(
        "dd-api-patched",
        scan_delay,
        CELL_SCAN_CONCURRENCY,
        app="bench.experiments:app",
        env={"DD_BENCH_PATCHES": patches},
    )


def _servers_note(baseline: dict[str, float]) -> str:
    rss = ", ".join(f"{name} {value:.0f} MB" for name, value in baseline.items()) or "-"
    return (
        "moto_server (S3 and SQS), tests/support/scanfiles.py stand-ins (0 s and 2 s), dd-api via "
        f"`hypercorn -c hypercorn.toml dd_api.asgi:app --bind 127.0.0.1:<port>` with "
        f"DOCUMENT_STORE=s3, NOTIFY_ENVIRONMENT=production, a scan queue of its own on moto "
        f"(SCAN_QUEUE_URL, SCAN_QUEUE_KEY, AWS_ENDPOINT_URL_SQS), "
        f"SCAN_CONCURRENCY={CELL_SCAN_CONCURRENCY} in the cells; "
        f"RSS after warm-up: {rss}"
    )


if __name__ == "__main__":
    sys.exit(main())
