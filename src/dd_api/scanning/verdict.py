"""What a document's scan tags mean, for scan-verdict and for downloads.

Two scanners may tag a document: dd-api's own background scan (``av-status``, the
scan-files values) and GuardDuty Malware Protection (``GuardDutyMalwareScanStatus``),
which wins when present. Any value not listed here is a failed scan: the original
treated unknown values as clean.
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


def scan_status(tags: Mapping[str, str]) -> str | None:
    """The tag value that decides: GuardDuty's when set, else dd-api's own."""
    return tags.get(GUARDDUTY_TAG) or tags.get(AV_STATUS_TAG) or None


def classify(tags: Mapping[str, str]) -> Verdict:
    status = scan_status(tags)
    if status is None:
        return Verdict.IN_PROGRESS
    return _VERDICTS.get(status, Verdict.FAILED)
