"""Large uploads spooled to a file the scan can take over, instead of the scan copying them.

Werkzeug spools a file part past 500 KiB to an anonymous temp file, which the request closes
(and so removes) when it ends; the scan, which runs later, then needed a copy of its own. Here
the first file part of a request over ``SCAN_MEMORY_THRESHOLD_BYTES`` goes to a named temp file:
the upload hands it to its scan with :meth:`SpoolingRequest.take_spool`, and the request removes
it at its end when nobody took it (a refused or failed upload).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Any, BinaryIO

from quart import Request, current_app
from quart.formparser import FormDataParser
from werkzeug.formparser import default_stream_factory

from .scanning.scanner import SCAN_FILE_PREFIX


class SpoolingRequest(Request):
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
        threshold = current_app.config["SCAN_MEMORY_THRESHOLD_BYTES"]
        # One named file per request at most: further parts (there is one document field)
        # cannot make a hostile form hold hundreds of files open.
        large = total_content_length is not None and total_content_length > threshold
        if self._spool is not None or not large:
            return default_stream_factory(
                total_content_length, content_type, filename, content_length
            )
        # a plain file object: aiohttp sends io objects as request bodies, not tempfile's wrapper
        fd, name = tempfile.mkstemp(prefix=SCAN_FILE_PREFIX)
        self._spool_path = Path(name)
        self._spool = open(fd, "w+b")  # closed with the request's files
        return self._spool

    def take_spool(self, stream: BinaryIO) -> Path | None:
        """The file ``stream`` was spooled to, now the caller's to remove; None if it is not one."""
        if stream is not self._spool or self._spool_path is None:
            return None
        stream.flush()  # the scan reads the file by name, past this object's buffer
        path, self._spool_path = self._spool_path, None
        return path

    async def close(self) -> None:
        await super().close()
        if self._spool_path is not None:
            self._spool_path.unlink(missing_ok=True)
            self._spool_path = None
