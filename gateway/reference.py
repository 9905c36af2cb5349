"""Reference data the gateway validates against: vaccination sites and priority groups.

Lives in PostgreSQL, cached in each gateway process and refreshed periodically. Every
successful load is also written to Redis as a snapshot, so a gateway that starts while
PostgreSQL is down still validates against the last known lists and keeps taking
registrations (which is the point of the queue).
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import redis.asyncio as aioredis

from gateway import constants as c
from gateway.connections import RedisError, is_unavailable
from gateway.exceptions import DataError, DependencyUnavailable
from gateway.settings import Settings
from gateway.store import Store

log = logging.getLogger(__name__)


class ReferenceCache:
    def __init__(self, settings: Settings, redis: aioredis.Redis, store: Store | None) -> None:
        self.settings = settings
        self.redis = redis
        self.store = store
        self.sites: frozenset[str] = frozenset()
        self.groups: frozenset[str] = frozenset()
        self.loaded = False
        self.source = ""

    def has_site(self, site_id: str) -> bool:
        return site_id in self.sites

    def has_priority_group(self, code: str) -> bool:
        return code in self.groups

    async def refresh(self) -> bool:
        if self.store is not None:
            try:
                sites, groups = await self.store.reference()
                self._set(sites, groups, "postgres")
                snapshot = orjson.dumps({"sites": sorted(sites), "groups": sorted(groups)})
                try:
                    await self.redis.set(self.settings.key(c.REFERENCE_SNAPSHOT_KEY), snapshot)
                except RedisError:
                    pass
                return True
            except (DependencyUnavailable, DataError) as exc:
                log.warning("reference data not loaded from postgres: %s", exc)
        try:
            raw = await self.redis.get(self.settings.key(c.REFERENCE_SNAPSHOT_KEY))
        except Exception as exc:  # noqa: BLE001
            if not is_unavailable(exc) and not isinstance(exc, RedisError):
                raise
            return False
        if raw:
            data = orjson.loads(raw)
            self._set(frozenset(data["sites"]), frozenset(data["groups"]), "redis-snapshot")
            return True
        return False

    def _set(self, sites: frozenset[str], groups: frozenset[str], source: str) -> None:
        self.sites, self.groups, self.source, self.loaded = sites, groups, source, True

    async def run(self) -> None:
        """Refresh forever: quickly until the first load, then every refresh period."""
        while True:
            ok = await self.refresh()
            await asyncio.sleep(self.settings.reference_refresh_s if ok and self.loaded else 1.0)
