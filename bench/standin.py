"""The scan-files stand-in of tests/support/scanfiles.py, run as a process that, when it stops,
writes what it scanned to a JSON file: the outage cell counts the scans of each document.

    python -m bench.standin --port P --api-key K [--delay S] --counts FILE

Serves exactly as ``python -m tests.support.scanfiles`` does (the same class, the same
contract) until SIGTERM or SIGINT, then writes ``{"scans_by_checksum": {SHA-256: count},
"requests": N}`` to FILE: the scans that answered with a verdict, by the SHA-256 of the bytes
scanned, and every ``POST /clamav`` received. Only the stand-in's public observations are read,
so tests/support/scanfiles.py is not changed.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from types import FrameType

from tests.support.scanfiles import ScanFilesStandIn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per scan")
    parser.add_argument("--counts", type=Path, required=True, help="JSON file written at exit")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with ScanFilesStandIn(api_key=args.api_key, host=args.host, port=args.port) as standin:
        standin.delay = args.delay
        print(f"scan-files stand-in listening on {standin.url}", flush=True)
        stop.wait()
    counts = {
        "scans_by_checksum": dict(standin.scans_by_checksum),
        "requests": len(standin.requests),
    }
    partial = args.counts.with_suffix(".partial")
    partial.write_text(json.dumps(counts))
    partial.replace(args.counts)
    print("scan-files stand-in stopped", flush=True)


if __name__ == "__main__":
    main()
