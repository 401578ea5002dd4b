"""Settings: the original's names and defaults, and start-up refusing bad values."""

from __future__ import annotations

import pytest

from dd_api.config import ConfigError, Settings
from dd_api.queue import new_queue_key, parse_queue_key


def test_defaults_match_the_original() -> None:
    settings = Settings.from_env({})
    assert settings.NOTIFY_ENVIRONMENT == "development"
    assert settings.AUTH_TOKENS == ("auth-token",)
    assert settings.MAX_CONTENT_LENGTH == 10 * 1024 * 1024 + 1024
    assert (settings.HTTP_SCHEME, settings.BACKEND_HOSTNAME) == ("http", "localhost:7000")
    assert settings.DOCUMENTS_BUCKET == "development-notification-canada-ca-document-download"
    assert settings.DOCUMENT_STORE == "local"
    assert str(settings.LOCAL_STORE_PATH) == "var/documents"
    assert settings.EXTRA_MIME_TYPES == frozenset()
    assert Settings.from_env({"NOTIFY_ENVIRONMENT": "test"}).DOCUMENTS_BUCKET == "test-bucket"


def test_auth_tokens_are_colon_separated() -> None:
    assert Settings.from_env({"AUTH_TOKENS": "a:b::c"}).AUTH_TOKENS == ("a", "b", "c")


def test_extra_mime_types_are_parsed_into_pairs() -> None:
    sid = "00000000-0000-0000-0000-000000000000"
    settings = Settings.from_env({"EXTRA_MIME_TYPES": f"{sid}:application/json, {sid}:image/gif"})
    assert settings.EXTRA_MIME_TYPES == {(sid, "application/json"), (sid, "image/gif")}


KEY = new_queue_key()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"NOTIFY_ENVIRONMENT": "prod"}, "NOTIFY_ENVIRONMENT"),
        ({"DOCUMENT_STORE": "gcs"}, "DOCUMENT_STORE"),
        ({"MAX_CONTENT_LENGTH": "ten"}, "MAX_CONTENT_LENGTH"),
        ({"MAX_CONTENT_LENGTH": "0"}, "MAX_CONTENT_LENGTH"),
        ({"EXTRA_MIME_TYPES": "not-a-uuid:application/json"}, "EXTRA_MIME_TYPES"),
        ({"EXTRA_MIME_TYPES": "00000000-0000-0000-0000-000000000000"}, "EXTRA_MIME_TYPES"),
        ({"HTTP_SCHEME": "ftp"}, "HTTP_SCHEME"),
        ({"ANTIVIRUS_API_HOST": "localhost:6016"}, "ANTIVIRUS_API_HOST"),
        ({"AUTH_TOKENS": ":"}, "AUTH_TOKENS"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"SCAN_CONCURRENCY": "0"}, "SCAN_CONCURRENCY"),
        ({"BACKGROUND_TASK_SHUTDOWN_TIMEOUT": "-1"}, "BACKGROUND_TASK_SHUTDOWN_TIMEOUT"),
        ({"DOCUMENTS_BUCKET": "b"}, "DOCUMENTS_BUCKET"),
        ({"NOTIFY_ENVIRONMENT": "production"}, "AUTH_TOKENS"),
        ({"NOTIFY_ENVIRONMENT": "production", "AUTH_TOKENS": "auth-token"}, "AUTH_TOKENS"),
        # only development and test accept the public development token
        ({"NOTIFY_ENVIRONMENT": "scratch"}, "AUTH_TOKENS"),
        ({"NOTIFY_ENVIRONMENT": "scratch", "AUTH_TOKENS": "auth-token"}, "AUTH_TOKENS"),
        ({"TRUSTED_PROXY_HOPS": "-1"}, "TRUSTED_PROXY_HOPS"),
        # the S3 store in production coordinates its instances through SQS
        (
            {"NOTIFY_ENVIRONMENT": "production", "AUTH_TOKENS": "t", "DOCUMENT_STORE": "s3"},
            "SCAN_QUEUE_URL",
        ),
        ({"SCAN_QUEUE_URL": "https://sqs.example/1/q"}, "SCAN_QUEUE_KEY"),
        ({"SCAN_QUEUE_KEY": "c2hvcnQ="}, "SCAN_QUEUE_KEY"),
        ({"SCAN_QUEUE_KEY": KEY, "SCAN_QUEUE_PREVIOUS_KEY": "nope"}, "SCAN_QUEUE_PREVIOUS_KEY"),
        ({"SCAN_QUEUE_DELAY_SECONDS": "901"}, "SCAN_QUEUE_DELAY_SECONDS"),
        ({"SCAN_BACKLOG_MEMORY_BYTES": "-1"}, "SCAN_BACKLOG_MEMORY_BYTES"),
        # scan-files' S3 route: both settings, well formed
        ({"SCAN_FILES_AWS_ACCOUNT": "123456789012"}, "SCAN_FILES_SNS_ARN"),
        (
            {"SCAN_FILES_SNS_ARN": f"arn:aws:sns:ca-central-1:{'1' * 12}:t"},
            "SCAN_FILES_AWS_ACCOUNT",
        ),
        ({"SCAN_FILES_AWS_ACCOUNT": "1234"}, "SCAN_FILES_AWS_ACCOUNT"),
        (
            {"SCAN_FILES_AWS_ACCOUNT": "123456789012", "SCAN_FILES_SNS_ARN": "topic"},
            "SCAN_FILES_SNS_ARN",
        ),
        ({"DOWNLOAD_CONCURRENCY": "0"}, "DOWNLOAD_CONCURRENCY"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(env, variable) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


def test_settings_of_the_retired_scan_design_still_start() -> None:
    old = {"SCAN_LEASE_SECONDS": "1", "PENDING_SCAN_GRACE_SECONDS": "junk"}
    settings = Settings.from_env({**old, "SCAN_DEADLINE_SECONDS": "900"})
    # the fast path always ends before its message comes back
    assert settings.fast_scan_window < settings.SCAN_QUEUE_DELAY_SECONDS


def test_queue_keys_current_then_previous() -> None:
    previous = new_queue_key()
    settings = Settings.from_env(
        {
            "SCAN_QUEUE_URL": "https://sqs.example/1/q",
            "SCAN_QUEUE_KEY": KEY,
            "SCAN_QUEUE_PREVIOUS_KEY": previous,
        }
    )
    assert settings.SCAN_QUEUE_KEYS == (parse_queue_key(KEY), parse_queue_key(previous))
    assert settings.masked()["SCAN_QUEUE_KEYS"] == "***"


def test_production_is_not_in_debug() -> None:
    settings = Settings.from_env({"NOTIFY_ENVIRONMENT": "production", "AUTH_TOKENS": "s3cr3t"})
    assert settings.DEBUG is False


def test_masked_config_hides_every_secret() -> None:
    settings = Settings.from_env(
        {
            "AUTH_TOKENS": "token-one:token-two",
            "ANTIVIRUS_API_KEY": "scan-secret",
            "SECRET_KEY": "flask-secret",
            "ROUTE_SECRET_KEY_1": "route-one",
            "ROUTE_SECRET_KEY_2": "route-two",
        }
    )
    shown = repr(settings.masked())
    for secret in ("token-one", "token-two", "scan-secret", "flask-secret", "route-one"):
        assert secret not in shown
    assert settings.masked()["AUTH_TOKENS"] == "***"
    assert settings.masked()["DOCUMENT_STORE"] == "local"
