"""Every key name, group name, TTL and default in one place."""

from __future__ import annotations

# --- Redis key layout -------------------------------------------------------------
# The shard number sits inside a hash tag ("{3}") so that on Redis Cluster a stream and
# the dedupe keys of the registrations routed to it share one slot, which lets one Lua
# script touch both atomically. No identity number or phone ever appears in a key name:
# dedupe keys carry a keyed hash (HMAC) of the normalised identity document.
STREAM_KEY = "intake:{{{shard}}}"
DEDUPE_KEY = "dedupe:{{{shard}}}:{identity_key}"
REFERENCE_SNAPSHOT_KEY = "reference:snapshot"
WRITER_HEARTBEAT_KEY = "writers:alive"
DRAIN_STATS_KEY = "writers:drained"
RATE_KEY = "rate:{{limits}}:{scope}:{subject}"  # one hash tag: one script call per batch
# One sample of the queue a second, kept for the live operations page and `gateway
# status`. Not an intake stream: trimming it by MAXLEN loses nothing that matters.
OPS_HISTORY_KEY = "ops:history"

CONSUMER_GROUP = "writers"

# Stream entry fields (short: they are repeated in every entry).
FIELD_PAYLOAD = "p"
FIELD_TOKEN = "t"

# --- Defaults ---------------------------------------------------------------------
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8080
DEFAULT_SHARDS = 1
DEFAULT_DEDUPE_TTL_S = 60 * 60 * 24 * 30  # the Postgres unique constraint covers later
DEFAULT_MAX_BODY_BYTES = 16 * 1024
# Slow clients: a 16 KiB body needs ~7 s on a 20 kbit/s 2G link; give it room, not forever.
# In aiohttp the header timeout is also the idle keep-alive time, and a backend must keep
# idle connections open longer than the reverse proxy in front of it (nginx: 60 s), or a
# POST sent on a connection the gateway is closing fails with a 502. Hence aiohttp's own
# 75 s; exposed without a proxy, a lower value cuts slow-header clients off sooner.
DEFAULT_HEADER_TIMEOUT_S = 75.0
DEFAULT_BODY_TIMEOUT_S = 30.0
# Rate-limit windows; Retry-After adds 0..jitter seconds so limited clients do not return
# in one wave when the window ends.
RATE_WINDOW_CLIENT_S = 60
RATE_WINDOW_PHONE_S = 60 * 60
RATE_RETRY_JITTER_S = 5
# Subjects this process knows to be over their limit until their window ends; past this
# many, new ones are simply checked in Redis each time.
RATE_DENIED_CACHE_MAX = 100_000
RATE_CLIENT_CACHE_MAX = 10_000  # client address -> counter key, to hash each address once
DEFAULT_MIN_AGE_YEARS = 18
MAX_AGE_YEARS = 120
PREFERRED_DATE_HORIZON_DAYS = 180

DEFAULT_APPEND_MAX_BATCH = 256
DEFAULT_APPEND_TIMEOUT_S = 2.0
DEFAULT_BACKLOG_HIGH_WATER = 1_000_000
DEFAULT_RETRY_AFTER_MIN_S = 2
DEFAULT_RETRY_AFTER_MAX_S = 120

DEFAULT_WRITER_BATCH = 500
DEFAULT_WRITER_BLOCK_MS = 1000
DEFAULT_CLAIM_IDLE_MS = 30_000
DEFAULT_CLAIM_INTERVAL_S = 5.0
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_PG_POOL_MAX = 4
DEFAULT_PG_COMMAND_TIMEOUT_S = 30.0
DEFAULT_PG_ACQUIRE_TIMEOUT_S = 10.0
WRITER_BACKOFF_INITIAL_S = 0.2
WRITER_BACKOFF_MAX_S = 10.0
WRITER_HEARTBEAT_TTL_S = 15

# --- Operations: metrics, status, live page ------------------------------------------
DEFAULT_WRITER_METRICS_PORT = 9101
DEFAULT_ALERT_OLDEST_AGE_S = 120.0
ALERT_BACKLOG_SHARE = 0.8  # of backlog_high_water, when alert_backlog is 0
OPS_HISTORY_LEN = 900  # one-second samples: fifteen minutes
OPS_SAMPLE_INTERVAL_S = 1.0
DEAD_LETTER_COUNT_CACHE_S = 10.0
OPS_SESSION_COOKIE = "gw_ops"
OPS_SESSION_TTL_S = 12 * 3600

REFERENCE_REFRESH_S = 60.0
SHUTDOWN_GRACE_S = 10.0

# Statuses a registration goes through (column registrations.status).
STATUS_QUEUED = "queued"
STATUS_STORED = "stored"
STATUS_HELD = "held"  # dead-lettered: an operator must look at it
STATUSES = ("stored", "screened", "scheduled", "vaccinated", "cancelled")

CHANNELS = ("web", "app")
GENDERS = ("male", "female", "other")
ID_DOCUMENT_TYPES = ("cccd", "cmnd", "passport")
PREFERRED_SESSIONS = ("morning", "afternoon", "evening")
SCREENING_QUESTIONS = (
    "fever_or_cough_14d",
    "covid_contact_14d",
    "severe_allergy_history",
    "previous_vaccine_reaction",
    "pregnant",
    "immunocompromised",
    "on_anticoagulants",
    "chronic_disease",
)

PAYLOAD_VERSION = 1
