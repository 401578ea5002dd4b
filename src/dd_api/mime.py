"""What kind of document was uploaded, and whether this service may send it."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import PurePosixPath
from typing import IO
from uuid import UUID

import magic

SNIFF_BYTES = 2048


def detect(stream: IO[bytes]) -> str:
    """libmagic's type for the first 2 KiB, as the original decides it; rewinds the stream."""
    head = stream.read(SNIFF_BYTES)
    stream.seek(0)
    return magic.from_buffer(head, mime=True)


def is_allowed(
    mimetype: str,
    service_id: UUID,
    allowed: Collection[str],
    extra: Collection[tuple[str, str]],
) -> bool:
    return mimetype in allowed or (str(service_id), mimetype) in extra


def fix_csv(mimetype: str, filename: str | None) -> str:
    # libmagic calls most CSV files text/plain; the sender's filename settles it.
    if mimetype == "text/plain" and filename and filename.lower().endswith(".csv"):
        return "text/csv"
    return mimetype


def file_extension(filename: str | None) -> str | None:
    """``my.report.v2.PDF`` -> ``report.v2.pdf``; ``None`` when the name has no dot at all."""
    if not filename or "." not in filename:
        return None
    return "".join(PurePosixPath(filename.lower()).suffixes).removeprefix(".")
