"""Settings read from the environment once, at start-up.

Names and defaults follow the original service where it had them. Every value is
parsed and checked here, so a bad deployment stops at start-up with a message
naming the variable instead of failing on the first request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict
from uuid import UUID

from dd_compat import PARENT_SPAN_ID_HEADER, SPAN_ID_HEADER, TRACE_ID_HEADER, parse_bool

from .queue.message import parse_queue_key

ENVIRONMENTS = ("development", "test", "scratch", "dev", "staging", "production")

# Order matters: the 400 error lists them as a Python list, as the original does.
ALLOWED_MIME_TYPES = (
    "application/pdf",
    "application/CDFV2",
    "text/csv",
    "text/plain",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "image/jpeg",
    "image/png",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.apple.numbers",
)

SECRET_SETTINGS = frozenset(
    {
        "AUTH_TOKENS",
        "ANTIVIRUS_API_KEY",
        "SECRET_KEY",
        "ROUTE_SECRET_KEY_1",
        "ROUTE_SECRET_KEY_2",
        "SCAN_QUEUE_KEYS",
    }
)
# Settings of the scan design that SQS replaced: still accepted, so that no deployment fails
# to start because it sets them, and named in the start-up log as ignored.
RETIRED_SETTINGS = (
    "PENDING_SCAN_GRACE_SECONDS",
    "PENDING_SCAN_SWEEP_INTERVAL_SECONDS",
    "SCAN_LEASE_SECONDS",
)

# The original shipped a development token; it must never be accepted in production.
DEFAULT_AUTH_TOKEN = "auth-token"  # noqa: S105


_ACCOUNT = re.compile(r"\d{12}")
_SNS_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}")


SCANNERS = ("scan-files", "clamd")
# where Debian's clamav-daemon listens
DEBIAN_CLAMD_SOCKET = "/var/run/clamav/clamd.ctl"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    NOTIFY_ENVIRONMENT: str = "development"
    DEBUG: bool = True
    AUTH_TOKENS: tuple[str, ...] = (DEFAULT_AUTH_TOKEN,)
    SECRET_KEY: str = "secret-key"  # noqa: S105 - unused by dd-api logic, kept for parity
    DOCUMENTS_BUCKET: str = "development-notification-canada-ca-document-download"
    ALLOWED_MIME_TYPES: tuple[str, ...] = ALLOWED_MIME_TYPES
    EXTRA_MIME_TYPES: frozenset[tuple[str, str]] = frozenset()
    MAX_CONTENT_LENGTH: int = 10 * 1024 * 1024 + 1024
    BODY_TIMEOUT_SECONDS: float = 60.0
    HTTP_SCHEME: str = "http"
    BACKEND_HOSTNAME: str = "localhost:7000"
    NOTIFY_APP_NAME: str = "Name"
    NOTIFY_LOG_LEVEL: str = "INFO"
    SCANNER: str = "scan-files"
    CLAMD_ADDRESS: str = DEBIAN_CLAMD_SOCKET
    ANTIVIRUS_API_HOST: str = "http://localhost:6016"
    ANTIVIRUS_API_KEY: str = ""
    # scan-files runs behind a Lambda function URL, whose invocation payload is capped at
    # 6 MB with a binary body base64-encoded in it: about 4.5 MB of document at most
    SCAN_FILES_MAX_BYTES: int = 4_400_000
    SCAN_FILES_BUCKET: str = ""  # default: DOCUMENTS_BUCKET
    SCAN_FILES_AWS_ACCOUNT: str = ""
    SCAN_FILES_SNS_ARN: str = ""
    # Host for direct_file_url. Deliberately not Quart's SERVER_NAME, which would
    # make every request to another Host (load balancer health checks) a 404.
    SERVER_NAME: str | None = None
    DOCUMENT_STORE: str = "local"
    LOCAL_STORE_PATH: Path = field(default_factory=lambda: Path("./var/documents"))
    S3_MAX_POOL_CONNECTIONS: int = 50
    S3_CONNECT_TIMEOUT_SECONDS: float = 3.0
    S3_READ_TIMEOUT_SECONDS: float = 10.0
    DOWNLOAD_CONCURRENCY: int = 32
    DOWNLOAD_STALL_SECONDS: float = 30.0
    TRUSTED_PROXY_HOPS: int = 0
    SCAN_CONCURRENCY: int = 4
    SCAN_DEADLINE_SECONDS: float = 300.0
    SCAN_ATTEMPT_TIMEOUT_SECONDS: float = 60.0
    SCAN_MEMORY_THRESHOLD_BYTES: int = 512 * 1024
    SCAN_TIMEOUT_SECONDS: int = 11 * 60
    BACKGROUND_TASK_SHUTDOWN_TIMEOUT: float = 5.0
    SCAN_QUEUE_URL: str | None = None
    SCAN_QUEUE_KEYS: tuple[bytes, ...] = ()  # SCAN_QUEUE_KEY, then SCAN_QUEUE_PREVIOUS_KEY
    SCAN_QUEUE_DELAY_SECONDS: float = 60.0
    SCAN_QUEUE_VISIBILITY_SECONDS: float = 30.0
    SCAN_RETRY_MAX_SECONDS: float = 60.0
    SCAN_QUEUE_DEPTH_POLL_SECONDS: float = 15.0
    # the embedded queue's redrive policy: an outage of PENDING_SCAN_MAX_AGE_SECONDS must
    # not dead-letter messages retried about once a minute
    SCAN_QUEUE_MAX_RECEIVES: int = 1000
    SCAN_BACKLOG_MEMORY_BYTES: int = 64 * 1024 * 1024
    SCAN_BACKLOG_DISK_BYTES: int = 512 * 1024 * 1024
    PENDING_SCAN_MAX_AGE_SECONDS: float = 3600.0
    NOTIFY_TRACE_ID_HEADER: str = TRACE_ID_HEADER
    NOTIFY_SPAN_ID_HEADER: str = SPAN_ID_HEADER
    NOTIFY_PARENT_SPAN_ID_HEADER: str = PARENT_SPAN_ID_HEADER
    CHECK_PROXY_HEADER: bool = False
    ROUTE_SECRET_KEY_1: str = ""
    ROUTE_SECRET_KEY_2: str = ""

    @property
    def fast_scan_window(self) -> float:
        """How long a fast-path scan may take: well inside its message's delay, so the
        queue never hands the same document to a second scan while the first still runs."""
        return min(self.SCAN_DEADLINE_SECONDS, self.SCAN_QUEUE_DELAY_SECONDS / 2)

    @property
    def scan_files_s3_route(self) -> bool:
        """Whether documents above SCAN_FILES_MAX_BYTES go through scan-files' S3 route."""
        return self.DOCUMENT_STORE == "s3" and bool(self.SCAN_FILES_AWS_ACCOUNT)

    @property
    def scan_copies_bucket(self) -> str:
        return self.SCAN_FILES_BUCKET or self.DOCUMENTS_BUCKET

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return _parse(env)

    def masked(self) -> dict[str, object]:
        """The effective settings with secrets replaced, for the start-up log."""
        shown: dict[str, object] = {}
        for name, value in asdict(self).items():
            if name in SECRET_SETTINGS:
                value = "***" if value else ""
            elif isinstance(value, frozenset | tuple):
                value = sorted(value) if isinstance(value, frozenset) else list(value)
            elif isinstance(value, Path):
                value = str(value)
            shown[name] = value
        return shown


def _parse(env: Mapping[str, str]) -> Settings:
    environment = _choice(env, "NOTIFY_ENVIRONMENT", ENVIRONMENTS, "development")
    in_dev = environment in ("development", "test")
    tokens = _auth_tokens(env, production=not in_dev)
    store = _choice(env, "DOCUMENT_STORE", ("local", "s3"), "local")
    queue_url = env.get("SCAN_QUEUE_URL", "").strip() or None
    return Settings(
        NOTIFY_ENVIRONMENT=environment,
        DEBUG=_bool(env, "DEBUG", in_dev),
        AUTH_TOKENS=tokens,
        SECRET_KEY=env.get("SECRET_KEY", "secret-key"),
        DOCUMENTS_BUCKET=_bucket(env, "test-bucket" if environment == "test" else None),
        EXTRA_MIME_TYPES=_extra_mime_types(env.get("EXTRA_MIME_TYPES", "")),
        MAX_CONTENT_LENGTH=_int(env, "MAX_CONTENT_LENGTH", Settings.MAX_CONTENT_LENGTH, minimum=1),
        BODY_TIMEOUT_SECONDS=_float(env, "BODY_TIMEOUT_SECONDS", 60.0),
        HTTP_SCHEME=_choice(env, "HTTP_SCHEME", ("http", "https"), "http"),
        BACKEND_HOSTNAME=_nonempty(env, "BACKEND_HOSTNAME", "localhost:7000"),
        NOTIFY_APP_NAME=_nonempty(env, "NOTIFY_APP_NAME", "Name"),
        NOTIFY_LOG_LEVEL=_choice(
            env, "NOTIFY_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "INFO"
        ),
        SCANNER=_scanner(env, in_dev),
        CLAMD_ADDRESS=_nonempty(env, "CLAMD_ADDRESS", DEBIAN_CLAMD_SOCKET),
        ANTIVIRUS_API_HOST=_url(env, "ANTIVIRUS_API_HOST", "http://localhost:6016"),
        # a trailing newline from a secrets file would make every scan a 401
        ANTIVIRUS_API_KEY=env.get("ANTIVIRUS_API_KEY", "").strip(),
        SCAN_FILES_MAX_BYTES=_int(
            env, "SCAN_FILES_MAX_BYTES", Settings.SCAN_FILES_MAX_BYTES, minimum=1
        ),
        SCAN_FILES_BUCKET=env.get("SCAN_FILES_BUCKET", "").strip(),
        **_scan_files_s3_route(env),
        SERVER_NAME=env.get("SERVER_NAME") or None,
        DOCUMENT_STORE=store,
        LOCAL_STORE_PATH=Path(_nonempty(env, "LOCAL_STORE_PATH", "./var/documents")),
        S3_MAX_POOL_CONNECTIONS=_int(env, "S3_MAX_POOL_CONNECTIONS", 50, minimum=1),
        S3_CONNECT_TIMEOUT_SECONDS=_float(env, "S3_CONNECT_TIMEOUT_SECONDS", 3.0),
        S3_READ_TIMEOUT_SECONDS=_float(env, "S3_READ_TIMEOUT_SECONDS", 10.0),
        DOWNLOAD_CONCURRENCY=_int(env, "DOWNLOAD_CONCURRENCY", 32, minimum=1),
        DOWNLOAD_STALL_SECONDS=_float(env, "DOWNLOAD_STALL_SECONDS", 30.0),
        TRUSTED_PROXY_HOPS=_int(env, "TRUSTED_PROXY_HOPS", 0, minimum=0),
        SCAN_CONCURRENCY=_int(env, "SCAN_CONCURRENCY", Settings.SCAN_CONCURRENCY, minimum=1),
        SCAN_DEADLINE_SECONDS=_float(env, "SCAN_DEADLINE_SECONDS", 300.0),
        SCAN_ATTEMPT_TIMEOUT_SECONDS=_float(env, "SCAN_ATTEMPT_TIMEOUT_SECONDS", 60.0),
        SCAN_MEMORY_THRESHOLD_BYTES=_int(
            env, "SCAN_MEMORY_THRESHOLD_BYTES", Settings.SCAN_MEMORY_THRESHOLD_BYTES, minimum=0
        ),
        SCAN_TIMEOUT_SECONDS=_int(env, "SCAN_TIMEOUT_SECONDS", 660, minimum=1),
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=_float(env, "BACKGROUND_TASK_SHUTDOWN_TIMEOUT", 5.0),
        SCAN_QUEUE_URL=queue_url,
        SCAN_QUEUE_KEYS=_queue_keys(env, queue_url, required=store == "s3" and not in_dev),
        SCAN_QUEUE_DELAY_SECONDS=_float(env, "SCAN_QUEUE_DELAY_SECONDS", 60.0, maximum=900.0),
        SCAN_QUEUE_VISIBILITY_SECONDS=_float(env, "SCAN_QUEUE_VISIBILITY_SECONDS", 30.0),
        SCAN_RETRY_MAX_SECONDS=_float(env, "SCAN_RETRY_MAX_SECONDS", 60.0, maximum=900.0),
        SCAN_QUEUE_DEPTH_POLL_SECONDS=_float(env, "SCAN_QUEUE_DEPTH_POLL_SECONDS", 15.0),
        SCAN_QUEUE_MAX_RECEIVES=_int(env, "SCAN_QUEUE_MAX_RECEIVES", 1000, minimum=1),
        SCAN_BACKLOG_MEMORY_BYTES=_int(
            env, "SCAN_BACKLOG_MEMORY_BYTES", Settings.SCAN_BACKLOG_MEMORY_BYTES, minimum=0
        ),
        SCAN_BACKLOG_DISK_BYTES=_int(
            env, "SCAN_BACKLOG_DISK_BYTES", Settings.SCAN_BACKLOG_DISK_BYTES, minimum=0
        ),
        PENDING_SCAN_MAX_AGE_SECONDS=_float(env, "PENDING_SCAN_MAX_AGE_SECONDS", 3600.0),
        NOTIFY_TRACE_ID_HEADER=_nonempty(env, "NOTIFY_TRACE_ID_HEADER", TRACE_ID_HEADER),
        NOTIFY_SPAN_ID_HEADER=_nonempty(env, "NOTIFY_SPAN_ID_HEADER", SPAN_ID_HEADER),
        NOTIFY_PARENT_SPAN_ID_HEADER=_nonempty(
            env, "NOTIFY_PARENT_SPAN_ID_HEADER", PARENT_SPAN_ID_HEADER
        ),
        CHECK_PROXY_HEADER=_bool(env, "CHECK_PROXY_HEADER", False),
        ROUTE_SECRET_KEY_1=env.get("ROUTE_SECRET_KEY_1", ""),
        ROUTE_SECRET_KEY_2=env.get("ROUTE_SECRET_KEY_2", ""),
    )


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, default).strip() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _nonempty(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default).strip()
    if not value:
        raise ConfigError(f"{name} must not be empty")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse_bool(raw)
    except ValueError:
        raise ConfigError(f"{name} must be true or false; got {raw!r}") from None


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number; got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}; got {value}")
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, *, maximum: float = float("inf")
) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds; got {raw!r}") from None
    if not 0 < value <= maximum:
        raise ConfigError(f"{name} must be greater than 0 and at most {maximum:g}; got {raw!r}")
    return value


def _scanner(env: Mapping[str, str], in_dev: bool) -> str:
    """SCANNER, else scan-files; but a developer who configured no scanner and has Debian's
    clamd running gets real scans from it."""
    if env.get("SCANNER", "").strip():
        return _choice(env, "SCANNER", SCANNERS, "scan-files")
    configured = any(env.get(name, "").strip() for name in ("ANTIVIRUS_API_HOST", "CLAMD_ADDRESS"))
    if in_dev and not configured and os.path.exists(DEBIAN_CLAMD_SOCKET):
        return "clamd"
    return "scan-files"


class _S3Route(TypedDict):
    SCAN_FILES_AWS_ACCOUNT: str
    SCAN_FILES_SNS_ARN: str


def _scan_files_s3_route(env: Mapping[str, str]) -> _S3Route:
    """The account and topic of scan-files' S3 route: both, or neither."""
    account = env.get("SCAN_FILES_AWS_ACCOUNT", "").strip()
    topic = env.get("SCAN_FILES_SNS_ARN", "").strip()
    if account and not _ACCOUNT.fullmatch(account):
        raise ConfigError("SCAN_FILES_AWS_ACCOUNT must be a 12-digit AWS account id")
    if topic and not _SNS_ARN.fullmatch(topic):
        raise ConfigError("SCAN_FILES_SNS_ARN must be an SNS topic ARN (arn:aws:sns:...)")
    if bool(account) != bool(topic):
        missing = "SCAN_FILES_SNS_ARN" if account else "SCAN_FILES_AWS_ACCOUNT"
        raise ConfigError(f"{missing} must be set with the other scan-files S3 route setting")
    return _S3Route(SCAN_FILES_AWS_ACCOUNT=account, SCAN_FILES_SNS_ARN=topic)


def _queue_keys(
    env: Mapping[str, str], queue_url: str | None, *, required: bool
) -> tuple[bytes, ...]:
    """SCAN_QUEUE_KEY, then the key it replaces while messages sent under that one drain."""
    raw = env.get("SCAN_QUEUE_KEY", "").strip()
    if required and not queue_url:
        raise ConfigError(
            "SCAN_QUEUE_URL must be set with the S3 store outside development and test"
        )
    if not raw:
        if queue_url:
            # every instance must encrypt under the same key: none may invent its own
            raise ConfigError("SCAN_QUEUE_KEY must be set when SCAN_QUEUE_URL is")
        return ()
    keys = []
    for name in ("SCAN_QUEUE_KEY", "SCAN_QUEUE_PREVIOUS_KEY"):
        value = env.get(name, "").strip()
        if not value:
            continue
        try:
            keys.append(parse_queue_key(value))
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from None
    return tuple(keys)


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default).strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL")
    return value


def _bucket(env: Mapping[str, str], test_default: str | None) -> str:
    default = test_default or Settings.DOCUMENTS_BUCKET
    value = env.get("DOCUMENTS_BUCKET", default).strip()
    if not 3 <= len(value) <= 63:
        raise ConfigError("DOCUMENTS_BUCKET must be an S3 bucket name of 3 to 63 characters")
    return value


def _auth_tokens(env: Mapping[str, str], *, production: bool) -> tuple[str, ...]:
    raw = env.get("AUTH_TOKENS")
    if raw is None:
        if production:
            raise ConfigError("AUTH_TOKENS must be set outside development and test")
        return (DEFAULT_AUTH_TOKEN,)
    tokens = tuple(token for token in raw.split(":") if token)
    if not tokens:
        raise ConfigError("AUTH_TOKENS must hold at least one colon-separated token")
    if production and DEFAULT_AUTH_TOKEN in tokens:
        raise ConfigError("AUTH_TOKENS must not contain the development token outside development")
    return tokens


def _extra_mime_types(raw: str) -> frozenset[tuple[str, str]]:
    pairs = set()
    for item in filter(None, (part.strip() for part in raw.split(","))):
        service_id, sep, mimetype = item.partition(":")
        try:
            service = str(UUID(service_id))
        except ValueError:
            service = ""
        if not sep or not service or "/" not in mimetype:
            raise ConfigError(
                "EXTRA_MIME_TYPES must be a comma-separated list of <service_id>:<mime/type>; "
                f"bad item {item!r}"
            )
        pairs.add((service, mimetype.strip()))
    return frozenset(pairs)
