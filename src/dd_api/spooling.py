"""Large uploads spooled to a file a fast-path scan can take over, instead of copying them.

Werkzeug spools a file part past 500 KiB to an anonymous temp file, which the request closes
(and so removes) when it ends; a scan, which runs later, would need a copy of its own. Here
the first file part of a request over ``SCAN_MEMORY_THRESHOLD_BYTES`` goes to a named file in
this process's spool directory: the upload hands it to its scan with
:meth:`SpoolingRequest.take_spool`, and the request removes it at its end when nobody took it
(a refused or failed upload, or one whose scan is left to the queue).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Any, cast

from quart import Request
from quart.formparser import FormDataParser
from quart.wrappers.request import Body
from werkzeug.formparser import default_stream_factory

from .runtime import runtime


class _Body(Body):
    """Remembers whether the client sent the whole body, read by the app or not."""

    received_all = False

    def set_complete(self) -> None:
        self.received_all = True
        super().set_complete()


class SpoolingRequest(Request):
    body_class = _Body

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spool: IO[bytes] | None = None
        self._spool_path: Path | None = None  # None once taken

    def make_form_data_parser(self) -> FormDataParser:
        parser = super().make_form_data_parser()
        parser.stream_factory = self._open_spool
        return parser

    def _open_spool(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        deps = runtime()
        threshold = deps.settings.SCAN_MEMORY_THRESHOLD_BYTES
        # One named file per request at most: further parts (there is one document field)
        # cannot make a hostile form hold hundreds of files open.
        large = total_content_length is not None and total_content_length > threshold
        if self._spool is not None or not large:
            return default_stream_factory(
                total_content_length, content_type, filename, content_length
            )
        # a plain file object: aiohttp sends io objects as request bodies, not tempfile's wrapper
        fd, name = tempfile.mkstemp(prefix="upload-", dir=deps.spool_dir.path)
        self._spool_path = Path(name)
        self._spool = open(fd, "w+b")  # closed with the request's files
        return self._spool

    def spooled(self, stream: IO[bytes]) -> Path | None:
        """The file ``stream`` was spooled to, or None if it is not one."""
        if stream is not self._spool or self._spool_path is None:
            return None
        stream.flush()  # the scan reads the file by name, past this object's buffer
        return self._spool_path

    def disown_spool(self) -> None:
        """The spool file is now someone else's to remove (a fast-path scan's)."""
        self._spool_path = None

    @property
    def body_received(self) -> bool:
        """Whether the whole body arrived: if not, the connection cannot be reused."""
        return cast(_Body, self.body).received_all

    async def close(self) -> None:
        await super().close()
        if self._spool_path is not None:
            self._spool_path.unlink(missing_ok=True)
            self._spool_path = None
