"""Pipeline settings: read from the environment once, at process start.

Each CALLSCOPE_* variable is a constant with a docstring. A bad value fails fast with the
variable's name in the message. Precedence: explicit argument (CLI flag) > environment > default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

CALLSCOPE_DATA = "CALLSCOPE_DATA"
"""The data directory (segments, timelines, callscope.duckdb). Default: ./callscope-data."""

CALLSCOPE_INGEST_TOKEN = "CALLSCOPE_INGEST_TOKEN"
"""When set, ingest requires `Authorization: Bearer <token>` and answers 401 without it."""

CALLSCOPE_MAX_BODY_BYTES = "CALLSCOPE_MAX_BODY_BYTES"
"""Largest OTLP request body ingest accepts, after decompression. Default 16 MiB."""

CALLSCOPE_GRACE_SECONDS = "CALLSCOPE_GRACE_SECONDS"
"""Seconds after a call's last activity to wait for `call.completed` (else `webhook_missing`). Default 300."""

CALLSCOPE_ANSWER_URL_TIMEOUT_MS = "CALLSCOPE_ANSWER_URL_TIMEOUT_MS"
"""How long MiniVoice waits for the answer_url; slower responses count as failed. Default 5000."""

CALLSCOPE_JAEGER_URL = "CALLSCOPE_JAEGER_URL"
"""Base URL of the Jaeger UI, for "open in Jaeger" links. Default http://localhost:16686."""

CALLSCOPE_DASHBOARD_URL = "CALLSCOPE_DASHBOARD_URL"
"""Base URL of the dashboard, for links back from Jaeger and the CLI. Default http://localhost:8501."""

CALLSCOPE_OTLP_ENDPOINTS = "CALLSCOPE_OTLP_ENDPOINTS"
"""Comma-separated OTLP/HTTP traces endpoints for spans the pipeline emits (the `minivoice.call` roots)."""

CALLSCOPE_PII_KEY = "CALLSCOPE_PII_KEY"
"""Key for the HMAC-SHA256 of phone numbers, so that holders of the key can search by number."""

MiB = 1024 * 1024


class SettingsError(ValueError):
    """An environment variable has a value callscope cannot use. The message names it."""


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _endpoints(environ: Mapping[str, str]) -> tuple[str, ...]:
    raw = environ.get(CALLSCOPE_OTLP_ENDPOINTS, "")
    endpoints = tuple(part.strip() for part in raw.split(",") if part.strip())
    for endpoint in endpoints:
        if not endpoint.startswith(("http://", "https://")):
            raise SettingsError(f"{CALLSCOPE_OTLP_ENDPOINTS} entry {endpoint!r} is not an http(s) URL")
    return endpoints


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a pipeline process reads from its environment."""

    data_dir: Path = Path("callscope-data")
    ingest_token: str | None = None
    max_body_bytes: int = 16 * MiB
    grace_seconds: int = 300
    answer_url_timeout_ms: int = 5000
    jaeger_url: str = "http://localhost:16686"
    dashboard_url: str = "http://localhost:8501"
    otlp_endpoints: tuple[str, ...] = ()
    pii_key: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `environ` (default: os.environ)."""
        env = os.environ if environ is None else environ
        return cls(
            data_dir=Path(env.get(CALLSCOPE_DATA) or "callscope-data"),
            ingest_token=env.get(CALLSCOPE_INGEST_TOKEN) or None,
            max_body_bytes=_int(env, CALLSCOPE_MAX_BODY_BYTES, 16 * MiB, minimum=1),
            grace_seconds=_int(env, CALLSCOPE_GRACE_SECONDS, 300),
            answer_url_timeout_ms=_int(env, CALLSCOPE_ANSWER_URL_TIMEOUT_MS, 5000, minimum=1),
            jaeger_url=(env.get(CALLSCOPE_JAEGER_URL) or "http://localhost:16686").rstrip("/"),
            dashboard_url=(env.get(CALLSCOPE_DASHBOARD_URL) or "http://localhost:8501").rstrip("/"),
            otlp_endpoints=_endpoints(env),
            pii_key=env.get(CALLSCOPE_PII_KEY) or None,
        )

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with the given fields replaced; None values are ignored (an unset CLI flag)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
