"""Statistics, target checks and the Markdown report of a benchmark run (no I/O but the writes)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

# raw2 (two PutObjects, the floor of the pending-copy design) is kept to re-render old runs
VARIANTS = ("scan0", "scan2", "patched", "raw", "rawq", "raw2")
API_VARIANTS = ("scan0", "scan2", "patched")
FLOORS = ("raw", "rawq", "raw2")
LABELS = {
    "scan0": "dd-api, scan 0 s",
    "scan2": "dd-api, scan 2 s",
    "patched": "dd-api, patched",
    "raw": "raw PutObject (floor)",
    "rawq": "raw PutObject + SendMessage",
    "raw2": "raw 2 x PutObject",
}
MB = 1_000_000
KIB, MIB = 1024, 1024 * 1024


# -- statistics ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def pass_stats(answer: dict[str, Any], server: str | None) -> dict[str, Any]:
    """One pass of one variant: latency percentiles, rates, errors, CPU per document.

    ``server`` names the dd-api process that served the pass (None for the raw floor)."""
    upload = answer["upload"]
    latencies = upload["latencies_ms"]
    stats: dict[str, Any] = {
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=None),
        "uploads_per_s": upload["ok"] / upload["wall_s"] if upload["wall_s"] else None,
        "upload_errors": upload["errors"],
        "error_samples": list(upload["error_samples"]),
    }
    verdicts = answer.get("verdicts")
    if verdicts is not None:
        stats["verdict_s"] = verdicts["latencies_s"]
        stats["verdict_missing"] = verdicts["missing"]
        stats["verdicts"] = verdicts["verdicts"]
    download = answer.get("download")
    if download is not None:
        wall = download["wall_s"]
        stats["download_mb_s"] = download["bytes"] / MB / wall if wall else None
        stats["download_errors"] = download["errors"]
        stats["error_samples"] += download["error_samples"]
    stats["cpu_ms"] = _cpu_per_document(answer, server)
    return stats


def _cpu_per_document(answer: dict[str, Any], server: str | None) -> dict[str, dict[str, float]]:
    """CPU ms per document of each phase, for the serving dd-api, the S3 server and loadgen."""
    per_doc: dict[str, dict[str, float]] = {}
    documents = max(1, answer["upload"]["ok"])
    for phase, seconds in answer.get("cpu_s", {}).items():
        names = {"dd-api": server, "s3": "s3", "loadgen": "loadgen"}
        per_doc[phase] = {
            label: seconds[name] * 1000 / documents
            for label, name in names.items()
            if name is not None and name in seconds
        }
    return per_doc


def summarize(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over passes, the pass-to-pass spread of the p50 and of the download rate."""
    summary: dict[str, Any] = {}
    for name in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "uploads_per_s", "download_mb_s"):
        values = [p[name] for p in passes if p.get(name) is not None]
        summary[name] = statistics.median(values) if values else None
        if name in ("p50_ms", "download_mb_s") and values:
            summary[f"{name}_range"] = [min(values), max(values)]
            summary[f"{name}_spread_pct"] = spread_pct(values)
    summary["cpu_ms"] = _median_cpu(passes)
    other = [p["other_cpu_pct"] for p in passes if "other_cpu_pct" in p]
    summary["other_cpu_pct"] = statistics.median(other) if other else None
    summary["other_cpu_pct_max"] = max(other, default=None)
    summary["errors"] = sum(p["upload_errors"] + p.get("download_errors", 0) for p in passes)
    summary["error_samples"] = [s for p in passes for s in p["error_samples"]][:5]
    return summary


def _median_cpu(passes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    medians: dict[str, dict[str, float]] = {}
    for phase in ("upload", "download"):
        found = [p["cpu_ms"][phase] for p in passes if phase in p.get("cpu_ms", {})]
        if found:
            medians[phase] = {name: statistics.median(f[name] for f in found) for name in found[0]}
    return medians


def spread_pct(values: list[float]) -> float:
    """(max - min) / median, in percent."""
    middle = statistics.median(values)
    return 100 * (max(values) - min(values)) / middle if middle else 0.0


def pooled_verdicts(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """The 201-to-verdict times of every pass together, and what the verdicts were."""
    waits = [wait for p in passes for wait in p.get("verdict_s", [])]
    verdicts: dict[str, int] = {}
    for p in passes:
        for verdict, n in p.get("verdicts", {}).items():
            verdicts[verdict] = verdicts.get(verdict, 0) + n
    return {
        "count": len(waits),
        "p50_s": percentile(waits, 50),
        "p99_s": percentile(waits, 99),
        "max_s": max(waits, default=None),
        "missing": sum(p.get("verdict_missing", 0) for p in passes),
        "not_clean": sum(
            n for verdict, n in verdicts.items() if verdict not in ("clean", "in_progress")
        ),
        "verdicts": verdicts,
    }


# -- targets ------------------------------------------------------------------------------------


def check_targets(
    cells: list[dict[str, Any]],
    burst: dict[str, Any] | None,
    outage: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for cell in cells:
        checks += _scan_hidden(cell) + _near_floor(cell) + _download_floor(cell)
    checks += _burst(burst)
    checks.append(_no_errors(cells))
    checks += _outage(outage)
    return checks


def _check(target: int | str, what: str, measured: str, ok: bool | None) -> dict[str, Any]:
    return {"target": target, "what": what, "measured": measured, "met": ok}


def _summary(cell: dict[str, Any], variant: str) -> dict[str, Any]:
    summary: dict[str, Any] = cell["variants"][variant]["summary"]
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _paired(cell: dict[str, Any], a: str, b: str, field: str, limit: Any) -> dict[str, Any]:
    """Per pass, ``a``'s value over ``limit(b's value)``; the two ran back to back in each
    pass, so the ratio cancels drift between passes. Answers the median and the range."""
    ratios = []
    passes_a, passes_b = cell["variants"][a]["passes"], cell["variants"][b]["passes"]
    for pass_a, pass_b in zip(passes_a, passes_b, strict=True):
        value_a, value_b = pass_a.get(field), pass_b.get(field)
        if value_a is not None and value_b:
            ratios.append(value_a / limit(value_b))
    if not ratios:
        return {"median": None, "low": None, "high": None}
    return {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios)}


def _paired_text(paired: dict[str, Any]) -> str:
    return f"{_f(paired['median'], 3)} (passes {_f(paired['low'], 3)}-{_f(paired['high'], 3)})"


def _scan_hidden(cell: dict[str, Any]) -> list[dict[str, Any]]:
    limit = 1.10 if cell["concurrency"] == 1 else 1.25
    slow, fast = _summary(cell, "scan2")["p50_ms"], _summary(cell, "scan0")["p50_ms"]
    paired = _paired(cell, "scan2", "scan0", "p50_ms", lambda fast: fast)
    what = f"{cell['label']}: upload p50 scan 2 s / scan 0 s <= {limit:.2f}"
    measured = f"{_f(slow)} / {_f(fast)} ms; ratio {_paired_text(paired)}"
    ok = paired["median"] is not None and paired["median"] <= limit
    return [_check(1, what, measured, ok)]


def _near_floor(cell: dict[str, Any]) -> list[dict[str, Any]]:
    if cell["concurrency"] != 1:
        return []
    checks = []
    for floor_variant in FLOORS:
        if floor_variant not in cell["variants"]:
            continue
        floor = _summary(cell, floor_variant)["p50_ms"]
        for variant in _apis(cell):
            p50 = _summary(cell, variant)["p50_ms"]
            paired = _paired(cell, variant, floor_variant, "p50_ms", lambda f: 1.3 * f + 5)
            what = (
                f"{cell['label']}, {LABELS[variant]}: upload p50 <= 1.3 x"
                f" {LABELS[floor_variant]} p50 + 5 ms"
            )
            measured = (
                f"{_f(p50)} ms vs floor {_f(floor)} ms;"
                f" p50 / (1.3 x floor + 5 ms) = {_paired_text(paired)}"
            )
            ok = paired["median"] is not None and paired["median"] <= 1
            # the target is against one PutObject; the 2-write floor is for context
            target = 2 if floor_variant == "raw" and variant != "patched" else "2 (info)"
            checks.append(_check(target, what, measured, ok if target == 2 else None))
    return checks


def _apis(cell: dict[str, Any]) -> list[str]:
    return [variant for variant in API_VARIANTS if variant in cell["variants"]]


def _download_floor(cell: dict[str, Any]) -> list[dict[str, Any]]:
    if cell["size"] != 10 * 1024 * 1024:
        return []
    floor = _summary(cell, "raw")["download_mb_s"]
    checks = []
    for variant in _apis(cell):
        rate = _summary(cell, variant)["download_mb_s"]
        paired = _paired(cell, variant, "raw", "download_mb_s", lambda f: f)
        what = f"{cell['label']}, {LABELS[variant]}: download >= 0.8 x GetObject"
        measured = f"{_f(rate)} vs {_f(floor)} MB/s; ratio {_paired_text(paired)}"
        ok = paired["median"] is not None and paired["median"] >= 0.8
        if variant == "patched":
            checks.append(_check("3 (info)", what, measured, None))
        else:
            checks.append(_check(3, what, measured, ok))
    return checks


def _burst(burst: dict[str, Any] | None) -> list[dict[str, Any]]:
    if burst is None:
        return [_check(4, "backlog burst", "not run", None)]
    verdicts = burst["verdicts"]
    ok = (
        burst["peak_rss_mb"] <= 200
        and burst["errors"] == 0
        and verdicts["missing"] == 0
        and verdicts["not_clean"] == 0
        and verdicts["count"] == burst["uploads"]
    )
    measured = (
        f"peak RSS {burst['peak_rss_mb']:.1f} MB, {burst['errors']} errors, "
        f"{verdicts['count']}/{burst['uploads']} verdicts, longest wait {_f(verdicts['max_s'])} s"
    )
    return [_check(4, "backlog burst: RSS <= 200 MB, no errors, every verdict", measured, ok)]


def outage_bounds(outage: dict[str, Any]) -> dict[str, float]:
    """What the outage cell's peaks are held to: the scan budgets, plus (for TMPDIR) the
    uploads being received, which are spooled before anyone decides about their scan."""
    budgets = outage["budgets"]
    largest = max(item["size"] for item in outage["uploads"])
    return {
        "rss_growth_mb": budgets["SCAN_BACKLOG_MEMORY_BYTES"] / MB,
        "tmp_bytes": budgets["SCAN_BACKLOG_DISK_BYTES"] + outage["concurrency"] * largest,
        "held_memory": budgets["SCAN_BACKLOG_MEMORY_BYTES"],
        "held_disk": budgets["SCAN_BACKLOG_DISK_BYTES"],
    }


def _outage(outage: dict[str, Any] | None) -> list[dict[str, Any]]:
    if outage is None:
        return [_check(6, "outage cell", "not run", None)]
    bounds = outage_bounds(outage)
    servers = outage["servers"].values()
    growth = max(s["peak_rss_mb"] - s["rss_after_start_mb"] for s in servers)
    rss = max(s["peak_rss_mb"] for s in servers)
    tmp = max(s["peak_tmp_bytes"] for s in servers)
    held_memory = max(s["peak_held_memory_bytes"] for s in servers)
    held_disk = max(s["peak_held_disk_bytes"] for s in servers)
    scans = outage["scans"]
    errors = outage["verdicts"].get("error", 0)
    bounded = (
        growth <= bounds["rss_growth_mb"]
        and tmp <= bounds["tmp_bytes"]
        and held_memory <= bounds["held_memory"]
        and held_disk <= bounds["held_disk"]
    )
    correct = (
        outage["upload"]["errors"] == 0
        and scans["documents_scanned_more_than_once"] == 0
        and errors == 0
        and outage["all_clean"]
    )
    return [
        _check(
            6,
            "outage: peak RSS growth <= SCAN_BACKLOG_MEMORY_BYTES, TMPDIR <= "
            "SCAN_BACKLOG_DISK_BYTES + the uploads in flight, dd_scan_bytes_held within both",
            f"RSS {rss:.1f} MB at most (+{growth:.1f} MB over the idle server; bound "
            f"+{bounds['rss_growth_mb']:.1f}); TMPDIR {tmp / MIB:.1f} MiB (bound "
            f"{bounds['tmp_bytes'] / MIB:.0f}); held {held_memory / MIB:.2f} MiB in memory, "
            f"{held_disk / MIB:.2f} MiB on disk",
            bounded,
        ),
        _check(
            6,
            "outage: no upload errors, no document scanned twice, no `error`, every document clean",
            f"{outage['upload']['errors']} upload errors, "
            f"{scans['documents_scanned_more_than_once']} scanned more than once, "
            f"{errors} `error`, {outage['verdicts'].get('clean', 0)}/{outage['count']} clean; "
            f"last verdict {_f(outage['last_verdict_after_return_s'])} s after scan-files' "
            "return",
            correct,
        ),
    ]


def _no_errors(cells: list[dict[str, Any]]) -> dict[str, Any]:
    total = 0
    for cell in cells:
        for name, variant in cell["variants"].items():
            if name == "patched":
                continue
            total += variant["summary"]["errors"]
            verdicts = variant.get("verdicts", {})
            total += verdicts.get("missing", 0) + verdicts.get("not_clean", 0)
    return _check(5, "no errors in any cell (uploads, downloads, verdicts)", f"{total}", total == 0)


# -- rendering ----------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _size_label(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size // (1024 * 1024)} MiB"
    return f"{size // 1024} KiB"


def cell_label(size: int, concurrency: int) -> str:
    return f"{_size_label(size)} c{concurrency}"


def render_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# dd-api benchmark: {meta['started']}",
        "",
        f"Command: `{meta['command']}` ({meta['mode']} run, {meta['passes']} passes per cell, "
        f"{meta['duration_s']:.0f} s)",
        "",
        *_machine_lines(meta),
        "",
        "## Targets",
        "",
        "| # | check | measured | met |",
        "|---|---|---|---|",
        *(_target_row(check) for check in result["targets"]),
        "",
        "## Cells",
        "",
        *_cell_table(result["cells"]),
        "",
        *_burst_lines(result.get("burst")),
        "",
        *_outage_lines(result.get("outage")),
        "",
        *_notes(),
    ]
    return "\n".join(lines) + "\n"


def _machine_lines(meta: dict[str, Any]) -> list[str]:
    machine = meta["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    return [
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']:.0f} GiB, "
        f"{machine['kernel']}; load average {machine['load_before']} before, "
        f"{machine['load_after']} after",
        f"- Versions: {versions}",
        f"- Code: {meta['git']}{_fingerprint(meta)}",
        f"- Servers: {meta['servers']}",
        *(
            [
                f"- Patched variant: {meta['patches']} (bench/experiments.py), with the "
                f"{meta.get('patched_scan_delay_s', 0):g} s stand-in"
            ]
            if meta.get("patches")
            else []
        ),
        *([f"- Cores: {meta['cores']}"] if meta.get("cores") else []),
    ]


def _fingerprint(meta: dict[str, Any]) -> str:
    """Which code the servers ran: the checkout is shared, and src/ may change mid-run."""
    start, end = meta.get("src_sha256"), meta.get("src_sha256_at_end")
    if start is None:
        return ""
    servers = meta.get("server_code")
    if servers is None:  # runs before the digest was taken per server
        if start == end:
            return f"; src/ and compat/ digest {start}, unchanged during the run"
        return f"; src/ and compat/ digest {start} at the start, {end} at the end"
    others = {name: code for name, code in servers.items() if code != start}
    text = f"; src/ and compat/ digest {start}"
    if not others:
        text += ", which every dd-api server started from"
    else:
        changed = ", ".join(f"{name} {code}" for name, code in others.items())
        text += f" at the start; **servers started from other code**: {changed}"
    if end != start and end not in servers.values():
        text += f" (changed again, to {end}, by the end of the run, after the last server start)"
    return text


def _target_row(check: dict[str, Any]) -> str:
    met = {True: "yes", False: "**NO**", None: "-"}[check["met"]]
    return f"| {check['target']} | {check['what']} | {check['measured']} | {met} |"


def _cell_table(cells: list[dict[str, Any]]) -> list[str]:
    rows = [
        "Upload latency in ms and download rate in MB/s (10^6 bytes) are medians over passes;"
        " [min-max] is the pass-to-pass range. Verdict is the time from the 201 to the verdict"
        " tag, pooled over the passes. RSS is the dd-api process's peak over the whole cell."
        " CPU is milliseconds of CPU time per document, of the dd-api process and of the S3"
        " server, during the upload phase (with the scans that ran beside it) and during the"
        " download phase. Other CPU is the CPU that processes outside the benchmark used during"
        " the passes, as a share of all cores (median, max): the noise the cell ran under.",
        "",
        "| cell | variant | uploads | p50 [min-max] | p90 | p99 | max | uploads/s"
        " | download MB/s [min-max] | verdict p50 / p99 s | peak RSS MB"
        " | upload CPU ms dd-api / S3 | download CPU ms dd-api / S3 | other CPU % | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        for variant in VARIANTS:
            if variant in cell["variants"]:
                rows.append(_cell_row(cell, variant))
    return rows


def _cell_row(cell: dict[str, Any], variant: str) -> str:
    data = cell["variants"][variant]
    s = data["summary"]
    p50_range = _range(s.get("p50_ms_range"))
    download_range = _range(s.get("download_mb_s_range"))
    verdicts = data.get("verdicts")
    verdict = (
        f"{_f(verdicts.get('p50_s'), 2)} / {_f(verdicts.get('p99_s'), 2)}" if verdicts else "-"
    )
    errors = s["errors"] + (verdicts["missing"] + verdicts["not_clean"] if verdicts else 0)
    rss = data.get("peak_rss_mb")
    cpu_up = s["cpu_ms"].get("upload", {})
    cpu_down = s["cpu_ms"].get("download", {})
    cpu_text = (
        f"{_f(cpu_up.get('dd-api'))} / {_f(cpu_up.get('s3'))}"
        f" | {_f(cpu_down.get('dd-api'))} / {_f(cpu_down.get('s3'))}"
    )
    return (
        f"| {cell['label']} | {LABELS[variant]} | {cell['count']} x {cell['passes']}"
        f" | {_f(s['p50_ms'])}{p50_range} | {_f(s['p90_ms'])} | {_f(s['p99_ms'])}"
        f" | {_f(s['max_ms'])} | {_f(s['uploads_per_s'])}"
        f" | {_f(s['download_mb_s'])}{download_range} | {verdict}"
        f" | {_f(rss)} | {cpu_text} | {_f(s.get('other_cpu_pct'), 0)}, "
        f"{_f(s.get('other_cpu_pct_max'), 0)} | {errors} |"
    )


def _range(bounds: list[float] | None) -> str:
    return "" if not bounds else f" [{_f(bounds[0])}-{_f(bounds[1])}]"


def _burst_lines(burst: dict[str, Any] | None) -> list[str]:
    if burst is None:
        return ["## Backlog burst", "", "Not run."]
    v = burst["verdicts"]
    return [
        "## Backlog burst",
        "",
        f"{burst['uploads']} uploads of {_size_label(burst['size'])} at concurrency "
        f"{burst['concurrency']}, scanner delay {burst['scan_delay_s']:g} s, "
        f"SCAN_CONCURRENCY={burst['scan_concurrency']}, on a fresh dd-api process.",
        "",
        "| peak RSS MB | RSS before MB | upload p50 / max ms | upload errors"
        " | verdicts | longest wait for a verdict s | all verdicts in after s |",
        "|---|---|---|---|---|---|---|",
        f"| {burst['peak_rss_mb']:.1f} | {burst['rss_before_mb']:.1f}"
        f" | {_f(burst['upload']['p50_ms'])} / {_f(burst['upload']['max_ms'])}"
        f" | {burst['errors']} | {v['count']}/{burst['uploads']} {v['verdicts']}"
        f" | {_f(v['max_s'])} | {_f(burst['drained_after_s'])} |",
    ]


def _outage_lines(outage: dict[str, Any] | None) -> list[str]:
    if outage is None:
        return ["## Outage", "", "Not run."]
    sizes = " + ".join(f"{u['count']} x {_size_label(u['size'])}" for u in outage["uploads"])
    settings = ", ".join(f"{k}={v}" for k, v in outage["settings"].items()) or "none"
    timeline, upload, scans = outage["timeline"], outage["upload"], outage["scans"]
    budgets = outage["budgets"]
    lines = [
        "## Outage",
        "",
        f"{sizes} (each document's bytes unique) at concurrency {outage['concurrency']} to "
        f"{outage['instances']} dd-api servers (production command, S3 and one shared SQS queue "
        f"on moto with a dead-letter queue after {outage.get('max_receives', '-')} receives, a "
        f"TMPDIR each) while scan-files is not running; it comes back (0 s stand-in) "
        f"{timeline['down_s']:.1f} s after the first upload, the uploads having been answered "
        f"after {timeline['uploads_answered_s']:.1f} s. Default SCAN_* settings "
        f"(SCAN_CONCURRENCY={budgets['SCAN_CONCURRENCY']}, SCAN_BACKLOG_MEMORY_BYTES="
        f"{budgets['SCAN_BACKLOG_MEMORY_BYTES'] // MIB} MiB, SCAN_BACKLOG_DISK_BYTES="
        f"{budgets['SCAN_BACKLOG_DISK_BYTES'] // MIB} MiB) except: {settings}.",
        "",
        "| server | RSS after start MB | peak RSS MB | peak TMPDIR MiB"
        " | peak dd_scan_bytes_held memory / disk MiB | scans fast / queue | verdicts"
        " | failed scan-files attempts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, server in outage["servers"].items():
        attempts = sum(server["scan_files_errors"].values())
        lines.append(
            f"| {name} | {server['rss_after_start_mb']:.1f} | {server['peak_rss_mb']:.1f}"
            f" | {server['peak_tmp_bytes'] / MIB:.1f}"
            f" | {server['peak_held_memory_bytes'] / MIB:.2f}"
            f" / {server['peak_held_disk_bytes'] / MIB:.2f}"
            f" | {server['scans'].get('fast', 0):.0f} / {server['scans'].get('queue', 0):.0f}"
            f" | {_counts(server['verdicts'])} | {attempts:.0f} |"
        )
    queue = outage["peak_queue"]
    emptied = timeline["queue_empty_after_return_s"]
    lines += [
        "",
        "| uploads | upload p50 / p99 / max ms | upload errors | verdicts | all clean"
        " | last verdict after the return s | median s | documents scanned more than once"
        " | never scanned | scans | queue empty after the return s | peak queue visible"
        " / in flight / delayed | dead-lettered |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {upload['ok']}/{outage['count']} | {_f(upload['p50_ms'])} / {_f(upload['p99_ms'])}"
        f" / {_f(upload['max_ms'])} | {upload['errors']} | {_counts(outage['verdicts'])}"
        f" | {'yes' if outage['all_clean'] else '**no**'}"
        f" | {_f(outage['last_verdict_after_return_s'])}"
        f" | {_f(outage['median_verdict_after_return_s'])}"
        f" | {scans['documents_scanned_more_than_once']} | {scans['documents_never_scanned']}"
        f" | {scans['total']} | {_f(emptied)}"
        f" | {queue['visible']} / {queue['in_flight']} / {queue['delayed']}"
        f" | {outage.get('dead_letters', '-')} |",
        "",
        f"CPU seconds while scan-files was down / after its return: {_cpu_text(outage['cpu_s'])}."
        f" Other CPU (processes outside the benchmark) during the cell: "
        f"{_f(outage.get('other_cpu_pct'), 0)} % of all cores.",
        "",
        *_outage_trace(outage["trace"]),
    ]
    return lines


def _cpu_text(cpu: dict[str, dict[str, float]]) -> str:
    names = list(cpu.get("down", {}))
    return ", ".join(
        f"{'moto' if name == 's3' else name} {cpu['down'][name]:.1f} / {cpu['back'][name]:.1f}"
        for name in names
    )


def _counts(counts: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}" for name, value in sorted(counts.items())) or "-"


def _outage_trace(trace: list[dict[str, Any]], rows: int = 24) -> list[str]:
    """Every n-th sample, so the table has about ``rows`` rows."""
    if not trace:
        return []
    step = max(1, len(trace) // rows)
    lines = [
        "Over time (s from the first upload; per server):",
        "",
        "| s | RSS MB | TMPDIR MiB | held memory / disk KiB | slots busy | scans written"
        " | queue visible / in flight / delayed |",
        "|---|---|---|---|---|---|---|",
    ]
    chosen = trace[::step]
    if chosen[-1] is not trace[-1]:
        chosen.append(trace[-1])
    for row in chosen:

        def joined(key: str, row: dict[str, Any] = row) -> str:
            return ", ".join("-" if v is None else f"{v:g}" for v in row.get(key, []))

        held = " ; ".join(
            f"{m:g} / {d:g}"
            for m, d in zip(
                row.get("held_memory_kib", []), row.get("held_disk_kib", []), strict=True
            )
        )
        queue = row.get("queue")
        depth = f"{queue['visible']} / {queue['in_flight']} / {queue['delayed']}" if queue else "-"
        lines.append(
            f"| {row['t']:.0f} | {joined('rss_mb')} | {joined('tmp_mib')} | {held or '-'}"
            f" | {joined('slots_busy')} | {joined('scans')} | {depth} |"
        )
    return lines


def _notes() -> list[str]:
    return [
        "## Notes",
        "",
        "- Each pass runs the variants of a cell back to back, in an order rotated every pass, so"
        " drift and noise from other work on the machine hit all of them alike. The target"
        " ratios are taken per pass (variants measured side by side), then their median.",
        "- A dd-api pass is: the uploads (their scans start at once and run beside them), a wait"
        " until every document of the pass has its verdict, then the downloads. So scans"
        " compete with uploads, as in production, but the download rate is the download path's"
        " own, and no scan backlog spills into the next variant's pass.",
        "- The verdict time is the av-timestamp tag minus the wall-clock time the 201 arrived."
        " With the 2 s scanner it includes the wait for a scan slot (SCAN_CONCURRENCY scans per"
        " 2 s), so it grows with the number of uploads in a pass.",
        "- With the 2 s stand-in, the uploads of a short pass (10 KiB and 1 MiB at concurrency"
        " 1) are over before the first scan answers, so their scans' S3 calls fall after the"
        " upload phase; with the 0 s stand-in each scan runs beside the next upload.",
        "- The load generator sends every request, to dd-api and to S3, with aiohttp (aioboto3"
        " runs on it), so both sides of each comparison pay the same client cost.",
        "- raw PutObject + SendMessage writes the document and, in parallel, sends a scan"
        " message (SQS, on the same moto server) as dd-api's upload does: the floor for the"
        " queue design. Its messages are delayed 60 s, as dd-api's fast-path messages are, and"
        " nobody receives them.",
        "- Each dd-api server of the cells has a scan queue of its own; a fast-path scan's"
        " message comes back 60 s after its upload (SCAN_QUEUE_DELAY_SECONDS) and is deleted"
        " unread, which costs a receive, a GetObjectTagging and a delete on moto, during"
        " whichever pass runs then. At the end of each cell the queues are purged before the"
        " bucket is emptied, so no message outlives its document.",
        "- The machine is shared and noisy: read the [min-max] ranges before reading small"
        " differences.",
    ]


def write(result: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(render_markdown(result))
    return json_path, md_path


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.report RESULTS.json``: rewrite the Markdown (and the target checks)
    of a saved run with the current code, e.g. after a change to this file."""
    import sys

    for name in argv if argv is not None else sys.argv[1:]:
        path = Path(name)
        result = json.loads(path.read_text())
        result["targets"] = check_targets(
            result["cells"], result.get("burst"), result.get("outage")
        )
        write(result, path.parent, path.stem)
        print(f"rewrote {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
