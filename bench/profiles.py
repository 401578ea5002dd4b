"""py-spy on a running server during a cell, and a readable summary of what it sampled.

``python -m bench.run --py-spy scan0`` records the dd-api server of that variant for each
cell (``py-spy record --pid``, raw collapsed stacks, non-blocking so the server is not paused)
and writes ``profile-<variant>-<cell>.txt`` (stacks, for flamegraph.pl or speedscope) and
``profile-<variant>-<cell>.md`` (top frames) beside the results.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RATE = 200  # samples per second
# Threads waiting for work, and the event loop waiting for I/O: not CPU time.
IDLE = re.compile(
    r"_worker \(concurrent/futures/thread\.py|select \(selectors\.py|"
    r"serve_forever|wait \(threading\.py|_bootstrap_inner"
)


# Frames every sample goes through (the event loop, the server's main): they say nothing.
PLUMBING = re.compile(
    r"asyncio/(runners|base_events|events)\.py|hypercorn/(__main__|run|asyncio/run)\.py|"
    r"^<module> |threading\.py"
)


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    return found


@contextmanager
def recording(pid: int, stacks: Path) -> Iterator[None]:
    """Sample ``pid`` while the block runs; the stacks land in ``stacks``."""
    argv = [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--rate", str(RATE)]
    argv += ["--nonblocking", "--output", str(stacks)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        _, error = process.communicate(timeout=60)
        if process.returncode not in (0, -signal.SIGINT) and not stacks.exists():
            print(f"py-spy failed: {error.decode(errors='replace')[-500:]}", file=sys.stderr)


# What a stack was doing, by the first pattern it matches (dd-api's code paths, as of this
# writing; a stack matching none counts as "other").
ACTIVITIES = (
    ("upload: S3 PutObject, document", r"S3Store\.put \("),
    ("upload: SQS SendMessage, scan message", r"SqsQueue\.send|MessageCodec\.encode"),
    ("upload: S3 PutObject bodies (aiohttp writing them)", r"write_bytes|IOBasePayload"),
    ("upload: multipart receive and parse", r"_load_form_data|formparser"),
    ("upload: spooling a large upload (temp file)", r"_spool"),
    ("upload: libmagic", r"mime\.py"),
    ("scan: sending the document to scan-files", r"ScanClient|scanning/client\.py|httpx|httpcore"),
    ("scan: reading a queued document back from S3", r"StoreSource"),
    ("scan: queue receive, visibility, delete", r"consume|SqsQueue|_needs_scan|_retry_later"),
    ("scan: verdict tags", r"write_verdict"),
    ("download: GetObjectTagging and GetObject", r"_serve|get_tags|S3Store\.get "),
    ("download: streaming the body out", r"_send_response|StoredDocument|iter_chunks"),
    ("other S3 client work", r"aiobotocore|botocore|aiohttp"),
    ("sockets and HTTP framing (hypercorn, h11, asyncio)", r"hypercorn|h11|selector_events"),
)


def summarize(stacks: Path, title: str, top: int = 40) -> str:
    """Markdown: the time by activity, then the busiest frames, inclusive and self, as shares
    of the non-idle samples."""
    inclusive, own, total = _count(stacks)
    lines = [
        f"# {title}",
        "",
        f"{total} non-idle samples at {RATE} Hz ({total / RATE:.1f} s of CPU)",
        "",
        "## By activity",
        "",
        "| share | activity |",
        "|---|---|",
    ]
    for activity, count in _activities(stacks).most_common():
        lines.append(f"| {100 * count / max(total, 1):.1f}% | {activity} |")
    for heading, counter in (("Inclusive", inclusive), ("Self", own)):
        lines += ["", f"## {heading}", "", "| share | frame |", "|---|---|"]
        for frame, count in counter.most_common(top):
            lines.append(f"| {100 * count / max(total, 1):.1f}% | `{frame}` |")
    return "\n".join(lines) + "\n"


def _activities(stacks: Path) -> Counter[str]:
    found: Counter[str] = Counter()
    for frames, samples in _samples(stacks):
        stack = ";".join(frames)
        name = next((name for name, pattern in ACTIVITIES if re.search(pattern, stack)), "other")
        found[name] += samples
    return found


def _samples(stacks: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, samples) of each non-idle stack."""
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame for frame in stack.split(";") if frame]
        if frames and count.isdigit() and not IDLE.search(frames[-1]):
            yield frames, int(count)


def _count(stacks: Path) -> tuple[Counter[str], Counter[str], int]:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for frames, samples in _samples(stacks):
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            if not PLUMBING.search(frame):
                inclusive[frame] += samples
    return inclusive, own, total


def main() -> None:
    """``python -m bench.profiles STACKS.txt ...``: rewrite the summary beside each."""
    for name in sys.argv[1:]:
        stacks = Path(name)
        summary = stacks.with_suffix(".md")
        title = summary.read_text().splitlines()[0].removeprefix("# ") if summary.exists() else name
        summary.write_text(summarize(stacks, title))
        print(f"rewrote {summary}")


if __name__ == "__main__":
    main()
