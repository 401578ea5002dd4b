"""What a document's scan tags mean, for scan-verdict, downloads and verdict writes.

Two scanners may tag a document: dd-api's own scan (``av-status``, the scan-files
values) and GuardDuty Malware Protection (``GuardDutyMalwareScanStatus``). A threat
reported by either one wins: GuardDuty cannot read SSE-C objects and tags them
``UNSUPPORTED``, which must never mask what ClamAV found. Otherwise GuardDuty, when
present, decides. Any value not listed here is a failed scan: the original treated
unknown values as clean.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

GUARDDUTY_TAG = "GuardDutyMalwareScanStatus"
AV_STATUS_TAG = "av-status"
IN_PROGRESS = "in_progress"


class Verdict(Enum):
    CLEAN = "clean"
    IN_PROGRESS = "in_progress"
    MALICIOUS = "malicious"
    UNSUPPORTED = "unsupported"
    FAILED = "failed"


_VERDICTS = {
    IN_PROGRESS: Verdict.IN_PROGRESS,
    "clean": Verdict.CLEAN,
    "NO_THREATS_FOUND": Verdict.CLEAN,
    "malicious": Verdict.MALICIOUS,
    "suspicious": Verdict.MALICIOUS,
    "THREATS_FOUND": Verdict.MALICIOUS,
    "UNSUPPORTED": Verdict.UNSUPPORTED,
}

# How much each verdict says: a write never replaces a value with one that says less, so an
# outage or a duplicate scan cannot turn "malicious" into "error", nor "clean" into "error".
_SEVERITY = {
    Verdict.IN_PROGRESS: 0,
    Verdict.FAILED: 1,
    Verdict.UNSUPPORTED: 1,
    Verdict.CLEAN: 2,
    Verdict.MALICIOUS: 3,
}


def _verdict_of(value: str | None) -> Verdict:
    if not value:
        return Verdict.IN_PROGRESS
    return _VERDICTS.get(value, Verdict.FAILED)


def scan_status(tags: Mapping[str, str]) -> str | None:
    """The tag value scan-verdict reports: GuardDuty's when set, else dd-api's own."""
    return tags.get(GUARDDUTY_TAG) or tags.get(AV_STATUS_TAG) or None


def classify(tags: Mapping[str, str]) -> Verdict:
    own, guardduty = _verdict_of(tags.get(AV_STATUS_TAG)), _verdict_of(tags.get(GUARDDUTY_TAG))
    if Verdict.MALICIOUS in (own, guardduty):
        return Verdict.MALICIOUS
    return _verdict_of(scan_status(tags))


def is_final(value: str | None) -> bool:
    """Whether ``av-status`` holds a verdict (anything but absent or in progress)."""
    return _verdict_of(value) is not Verdict.IN_PROGRESS


def supersedes(new: str, current: str | None) -> bool:
    """Whether writing ``av-status=new`` over ``current`` keeps the most severe verdict."""
    return _SEVERITY[_verdict_of(new)] >= _SEVERITY[_verdict_of(current)]
