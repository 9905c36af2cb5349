"""One exception hierarchy. Driver errors are translated into these only in the Redis
and Postgres adapter modules; nothing else imports ``redis`` or ``asyncpg``."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(GatewayError):
    """Settings or a server's configuration are unsafe or inconsistent."""


class DependencyUnavailable(GatewayError):
    """Redis or PostgreSQL cannot be reached or refused the command (overload, OOM).

    The HTTP layer answers 503 with ``Retry-After``; the writer backs off and retries.
    """

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency} unavailable: {reason}")
        self.dependency = dependency
        self.reason = reason


class Overloaded(GatewayError):
    """The backlog is above its high-water mark: shed with 503 + Retry-After."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"overloaded, retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class DataError(GatewayError):
    """A stored record cannot be written as it is (poison input): dead-letter it."""
