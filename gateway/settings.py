"""One frozen settings object, read from ``GATEWAY_*`` variables plus ``REDIS_URL`` and
``DATABASE_URL`` (libpq's ``PG*`` variables apply when ``DATABASE_URL`` is empty)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from gateway import constants as c
from gateway.exceptions import ConfigurationError

_DEV_SECRET = "dev-only-identity-secret-change-me"


def _mask_url(url: str) -> str:
    """Hide the password part of a URL for repr/logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = ""
    mode: str = "development"  # or "production": refuses an unsafe Redis, needs a secret
    durability: str = "everysec"  # or "strict": 202 only after the entry reached disk
    host: str = c.DEFAULT_HTTP_HOST
    port: int = c.DEFAULT_HTTP_PORT
    workers: int = 1
    writers: int = 1
    key_prefix: str = ""
    shards: int = c.DEFAULT_SHARDS
    identity_secret: str = field(default=_DEV_SECRET, repr=False)
    # Comma-separated hex SHA-256 digests of the accepted operator tokens (``gateway
    # token`` makes one); the tokens themselves are never stored.
    operator_token_sha256: str = field(default="", repr=False)
    dedupe_ttl_s: int = c.DEFAULT_DEDUPE_TTL_S
    max_body_bytes: int = c.DEFAULT_MAX_BODY_BYTES
    min_age_years: int = c.DEFAULT_MIN_AGE_YEARS
    append_max_batch: int = c.DEFAULT_APPEND_MAX_BATCH
    append_timeout_s: float = c.DEFAULT_APPEND_TIMEOUT_S
    backlog_high_water: int = c.DEFAULT_BACKLOG_HIGH_WATER
    retry_after_max_s: int = c.DEFAULT_RETRY_AFTER_MAX_S
    writer_batch: int = c.DEFAULT_WRITER_BATCH
    writer_block_ms: int = c.DEFAULT_WRITER_BLOCK_MS
    claim_idle_ms: int = c.DEFAULT_CLAIM_IDLE_MS
    claim_interval_s: float = c.DEFAULT_CLAIM_INTERVAL_S
    max_deliveries: int = c.DEFAULT_MAX_DELIVERIES
    pg_pool_max: int = c.DEFAULT_PG_POOL_MAX
    pg_command_timeout_s: float = c.DEFAULT_PG_COMMAND_TIMEOUT_S
    pg_acquire_timeout_s: float = c.DEFAULT_PG_ACQUIRE_TIMEOUT_S
    reference_refresh_s: float = c.REFERENCE_REFRESH_S
    shutdown_grace_s: float = c.SHUTDOWN_GRACE_S
    rate_limit_per_ip: int = 0  # requests per minute; 0 = off
    rate_limit_per_phone: int = 0  # submissions per hour; 0 = off
    # Comma-separated addresses/CIDRs of reverse proxies whose X-Forwarded-For is believed.
    trusted_proxies: str = ""
    # A connection must send its request head within this long of connecting (or of its
    # previous response); also the idle keep-alive time.
    header_timeout_s: float = c.DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = c.DEFAULT_BODY_TIMEOUT_S  # whole body, from the handler's start
    log_level: str = "INFO"
    writer_metrics_port: int = c.DEFAULT_WRITER_METRICS_PORT  # 0: the writer serves no /metrics
    alert_backlog: int = 0  # `gateway status` marks; 0: 80% of backlog_high_water
    alert_oldest_age_s: float = c.DEFAULT_ALERT_OLDEST_AGE_S

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("identity_secret", "operator_token_sha256"):
                value = "***" if value else ""
            elif f.name in ("redis_url", "database_url"):
                value = _mask_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def production(self) -> bool:
        return self.mode == "production"

    def key(self, template: str, **parts: Any) -> str:
        """A Redis key name under this deployment's prefix."""
        return self.key_prefix + template.format(**parts)

    def stream_key(self, shard: int) -> str:
        return self.key(c.STREAM_KEY, shard=shard)

    def stream_keys(self) -> list[str]:
        return [self.stream_key(s) for s in range(self.shards)]

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("GATEWAY_" + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        if env.get("REDIS_URL"):
            values.setdefault("redis_url", env["REDIS_URL"])
        if env.get("DATABASE_URL"):
            values.setdefault("database_url", env["DATABASE_URL"])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.mode not in ("development", "production"):
            raise ConfigurationError("GATEWAY_MODE must be 'development' or 'production'")
        if self.durability not in ("everysec", "strict"):
            raise ConfigurationError("GATEWAY_DURABILITY must be 'everysec' or 'strict'")
        if self.shards < 1 or self.shards > 1024:
            raise ConfigurationError("GATEWAY_SHARDS must be between 1 and 1024")
        if self.production and self.identity_secret == _DEV_SECRET:
            raise ConfigurationError(
                "GATEWAY_IDENTITY_SECRET must be set in production: it keys the hashes "
                "that stand for identity numbers and phones"
            )
        for digest in filter(None, (d.strip() for d in self.operator_token_sha256.split(","))):
            if len(digest) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in digest):
                raise ConfigurationError(
                    "GATEWAY_OPERATOR_TOKEN_SHA256 must be comma-separated hex SHA-256 "
                    "digests (`gateway token` prints one)"
                )
        if self.append_max_batch < 1 or self.writer_batch < 1:
            raise ConfigurationError("batch sizes must be at least 1")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise ConfigurationError(
                "GATEWAY_HEADER_TIMEOUT_S and GATEWAY_BODY_TIMEOUT_S must be above 0"
            )
        if self.rate_limit_per_ip < 0 or self.rate_limit_per_phone < 0:
            raise ConfigurationError("rate limits must be 0 (off) or positive")


def _convert(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"GATEWAY_{name.upper()} must be a number, got {raw!r}") from exc
    return raw
