"""The writer: drains the intake streams into PostgreSQL.

Loop: XREADGROUP a batch -> coerce each entry to a row (a malformed entry is
dead-lettered at once) -> COPY + INSERT … ON CONFLICT DO NOTHING -> COMMIT -> XACK + XDEL.
Nothing is acknowledged before its commit. When PostgreSQL is down the batch stays in
hand and pending, and the writer retries with exponential back-off; a batch that fails on
*data* is split in halves until the bad record is alone, which is dead-lettered while
the rest commits. Entries a dead writer left pending are reclaimed with XAUTOCLAIM;
after ``max_deliveries`` they are dead-lettered instead of tried again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from gateway import constants as c
from gateway import metrics
from gateway.connections import RedisError, connect, is_unavailable
from gateway.exceptions import DataError, DependencyUnavailable
from gateway.identity import registration_id
from gateway.settings import Settings
from gateway.store import DeadLetter, Store, encode_screening
from gateway.stream import Entry, Streams
from gateway.validation import Registration

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Coerced:
    entry: Entry
    row: tuple[Any, ...]


@dataclass
class WriterStats:
    committed: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    batches: int = 0
    outages: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(24):06x}"


def coerce(entry: Entry) -> Coerced:
    """Turn a stream entry into a row with explicit types, or raise DataError."""
    fields = entry.fields or {}
    try:
        payload = orjson.loads(fields[c.FIELD_PAYLOAD.encode()])
        token = fields[c.FIELD_TOKEN.encode()].decode()
        received_at = datetime.fromisoformat(fields[b"a"].decode())
    except (KeyError, ValueError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise DataError(f"malformed entry: {type(exc).__name__}") from exc
    if not isinstance(payload, dict):
        raise DataError("payload is not an object")
    identity_key = payload.get("identity_key")
    if not isinstance(identity_key, str) or len(identity_key) != 32:
        raise DataError("payload has no identity key")
    reg = Registration.from_payload(payload)
    if received_at.tzinfo is None:
        raise DataError("received_at has no time zone")
    row = (
        registration_id(entry.shard, entry.entry_id, token), identity_key, reg.id_type,
        reg.id_number, reg.full_name, reg.date_of_birth, reg.gender, reg.phone, reg.email,
        reg.health_insurance_number, reg.province_code, reg.ward_code, reg.street,
        reg.priority_group, reg.occupation, reg.site_id, reg.preferred_date,
        reg.preferred_session, encode_screening(reg.screening), reg.channel, received_at,
    )
    return Coerced(entry, row)


def _payload_text(entry: Entry) -> str | None:
    if not entry.fields:
        return None
    raw = entry.fields.get(c.FIELD_PAYLOAD.encode(), b"")
    return raw.decode("utf-8", errors="replace")


def _held(letter: DeadLetter) -> tuple[int, str, str] | None:
    """(shard, identity key, registration id) of a dead letter, when recoverable."""
    if letter.registration_id is None or letter.payload is None:
        return None
    try:
        identity_key = orjson.loads(letter.payload).get("identity_key")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(identity_key, str):
        return None
    return int(letter.registration_id.split("-", 1)[0]), identity_key, letter.registration_id


def _rid_of(entry: Entry) -> str | None:
    token = (entry.fields or {}).get(c.FIELD_TOKEN.encode())
    if not token:
        return None
    return registration_id(entry.shard, entry.entry_id, token.decode("utf-8", "replace"))


class Writer:
    def __init__(self, settings: Settings, streams: Streams, store: Store) -> None:
        self.settings = settings
        self.streams = streams
        self.store = store
        self.stats = WriterStats()
        self.stopping = asyncio.Event()
        self._last_claim = 0.0
        self._last_beat = 0.0
        self._uncounted = 0

    # -- main loop -------------------------------------------------------------------
    async def run(self) -> None:
        await self._until_ok(self.streams.ensure_groups)
        log.info("writer started", extra={"consumer": self.streams.consumer})
        while not self.stopping.is_set():
            await self.step()
        await self._beat(force=True)
        try:
            await self.streams.forget_consumer()
        except RedisError:
            pass
        log.info("writer stopped", extra={"committed": self.stats.committed})

    async def step(self) -> int:
        """One round: reclaim what is due, read new entries, write them. Returns count."""
        entries: list[Entry] = []
        now = time.monotonic()
        try:
            if now - self._last_claim >= self.settings.claim_interval_s:
                self._last_claim = now
                entries = await self.streams.claim_stale(self.settings.writer_batch)
            if not entries:
                entries = await self.streams.read_new(
                    self.settings.writer_batch, self.settings.writer_block_ms
                )
        except Exception as exc:  # noqa: BLE001
            if not is_unavailable(exc) and not isinstance(exc, RedisError):
                raise
            log.warning("redis unavailable to writer: %s", type(exc).__name__)
            metrics.WRITER_OUTAGES.labels("redis").inc()
            await self._sleep(1.0)
            return 0
        if entries:
            await self.process(entries)
        await self._beat()
        return len(entries)

    async def process(self, entries: Sequence[Entry]) -> None:
        """Write one batch; returns only when it is committed and acknowledged (or the
        writer is stopping, in which case the entries stay pending for another writer)."""
        metrics.WRITER_BATCH.observe(len(entries))
        good: list[Coerced] = []
        dead: list[DeadLetter] = []
        for entry in entries:
            if entry.fields is None:  # deleted while pending: nothing to write
                # Keep a record (stream + entry id) for the operator: if a 202 stood
                # behind it, this is where its trace ends.
                metrics.WRITER_DELETED_PENDING.inc()
                log.warning("pending entry was deleted from the stream", extra={"entry": entry.entry_id})
                dead.append(self._letter(entry, "deleted_while_pending",
                                         "entry deleted from the stream before it was written"))
                continue
            if entry.deliveries > self.settings.max_deliveries:
                dead.append(self._letter(entry, "max_deliveries", f"delivered {entry.deliveries} times"))
                continue
            try:
                good.append(coerce(entry))
            except DataError as exc:
                dead.append(self._letter(entry, "malformed", str(exc)))
        started = time.perf_counter()
        done = await self._until_ok(lambda: self._write(good, dead))
        if not done:
            return
        metrics.WRITER_COMMIT_SECONDS.observe(time.perf_counter() - started)
        await self._until_ok(lambda: self.streams.ack_and_delete(entries))
        self.stats.batches += 1

    async def _write(self, good: list[Coerced], dead: list[DeadLetter]) -> None:
        letters = list(dead)
        await self._write_split(good, letters)
        if letters:
            await self.store.dead_letter(letters)
            # Free the person to register again: their dedupe key would otherwise answer
            # "already registered" for a record that never reached the table. A
            # duplicate_identity letter keeps it: that person *is* registered.
            await self.streams.release_identities(
                [h for d in letters if d.reason != "duplicate_identity" and (h := _held(d))]
            )
            for letter in letters:
                self.stats.dead_lettered += 1
                self.stats.reasons[letter.reason] = self.stats.reasons.get(letter.reason, 0) + 1
                metrics.WRITER_DEAD_LETTERS.labels(letter.reason).inc()

    async def _write_split(self, batch: list[Coerced], letters: list[DeadLetter]) -> None:
        if not batch:
            return
        try:
            outcome = await self.store.write_rows([c_.row for c_ in batch])
        except DataError as exc:
            if len(batch) == 1:
                letters.append(self._letter(batch[0].entry, "rejected_by_database", str(exc)))
                return
            half = len(batch) // 2
            await self._write_split(batch[:half], letters)
            await self._write_split(batch[half:], letters)
            return
        self.stats.committed += len(outcome.inserted)
        self.stats.redelivered += len(outcome.already)
        self._uncounted += len(outcome.inserted)
        metrics.WRITER_ROWS.inc(len(outcome.inserted))
        for index in outcome.conflicts:
            letters.append(
                self._letter(batch[index].entry, "duplicate_identity",
                             "identity already registered under another id")
            )

    def _letter(self, entry: Entry, reason: str, detail: str) -> DeadLetter:
        return DeadLetter(
            entry.stream, entry.entry_id, _rid_of(entry), reason, detail,
            _payload_text(entry), entry.deliveries,
        )

    async def _until_ok(self, action: Any) -> bool:
        """Retry an action through outages with capped exponential back-off and jitter.
        False when the writer was asked to stop first (nothing acknowledged then)."""
        delay = c.WRITER_BACKOFF_INITIAL_S
        while True:
            try:
                await action()
                return True
            except DependencyUnavailable as exc:
                dependency = exc.dependency
            except Exception as exc:  # noqa: BLE001
                if not is_unavailable(exc):
                    raise
                dependency = "redis"
            self.stats.outages += 1
            metrics.WRITER_OUTAGES.labels(dependency).inc()
            log.warning("%s unavailable; retrying in %.1fs", dependency, delay)
            if self.stopping.is_set():
                return False
            # Still alive while waiting out an outage: "writers down" must not fire
            # beside "PostgreSQL down" (a no-op while Redis itself is away).
            await self._beat()
            await self._sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, c.WRITER_BACKOFF_MAX_S)

    async def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < 2.0:
            return
        self._last_beat = now
        try:
            await self.streams.heartbeat(self._uncounted)
            self._uncounted = 0
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat is not fatal
            if not is_unavailable(exc) and not isinstance(exc, RedisError):
                raise

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass


async def run_writer(settings: Settings, stop: asyncio.Event | None = None) -> WriterStats:
    """Open Redis and PostgreSQL, run one writer until ``stop`` is set."""
    redis = await connect(settings, timeout_s=settings.writer_block_ms / 1000 + 5)
    store = await Store.open(settings)
    writer = Writer(settings, Streams(redis, settings, consumer_name()), store)
    endpoint = await metrics.start_writer_endpoint(settings, redis, store)
    if stop is not None:
        async def relay() -> None:
            await stop.wait()
            writer.stopping.set()
        relay_task = asyncio.create_task(relay())
    try:
        await writer.run()
    finally:
        if stop is not None:
            relay_task.cancel()
        if endpoint is not None:
            await endpoint.cleanup()
        await store.close()
        await redis.aclose()
    return writer.stats
