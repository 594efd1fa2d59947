"""Service settings, read from environment variables (pydantic-settings).

Every field maps to the upper-case environment variable of the same name, e.g.
``max_k`` <- ``MAX_K``. ``Settings()`` reads the environment; tests build
``Settings(artifacts_dir=..., redis_url=...)`` directly.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- model bundle -------------------------------------------------------------------
    artifacts_dir: str = Field(
        "artifacts/current",
        description="A bundle directory, an artifacts root, or a `current` pointer.",
    )
    reload_poll_s: float = Field(
        10.0, ge=0, description="Poll the resolved `current` target this often; 0 = off."
    )
    index_mmap: bool = Field(True, description="Memory-map the FAISS index when possible.")
    index_poll_s: float = Field(
        0.5,
        ge=0,
        description="Stat the bundle's manifest this often and swap in a new index version "
        "(item API writes, `python -m index add`) without a full reload; 0 = off.",
    )
    max_item_batch: int = Field(
        1000, ge=1, description="Most upserts + deletes in one POST /items/batch."
    )

    # --- cache / Redis ------------------------------------------------------------------
    redis_url: SecretStr | None = Field(
        None,
        description="Redis for the vector cache and event histories (a password goes in "
        "the URL; never logged or shown); unset = in-process.",
    )
    redis_cluster: bool = Field(
        False, description="REDIS_URL names a seed node of a Redis Cluster (RedisCluster client)."
    )
    redis_required: bool = Field(
        False,
        description="/readyz answers 503 while Redis is unreachable (default: 200, degraded).",
    )
    cache_enabled: bool = Field(True, description="False turns the user-vector cache off.")
    cache_ttl_s: int = Field(3600, ge=1, description="TTL of a cached user vector.")
    cache_prefix: str = Field(
        "towerrec:", pattern=r"^[^{}]*$", description="Prefix of every Redis key (no braces)."
    )
    cache_local_size: int = Field(
        100_000, ge=1, description="Entries of the in-process LRU used when REDIS_URL is unset."
    )
    redis_socket_timeout_s: float = Field(
        0.1, gt=0, description="Socket and connect timeout of every Redis call."
    )
    redis_retry_s: float = Field(
        1.0, gt=0, description="After a Redis failure, skip Redis for this long (circuit breaker)."
    )
    redis_log_interval_s: float = Field(
        30.0, ge=0, description="Log Redis failures at most once per interval."
    )

    # --- event history ------------------------------------------------------------------
    history_len: int = Field(
        50, ge=1, description="Recent items kept per user (bundle history + /events)."
    )
    history_ttl_s: int = Field(
        30 * 86400, ge=0, description="Expire a user's event list after this long idle; 0 = never."
    )
    event_id_ttl_s: int = Field(
        86400,
        ge=1,
        description="How long an event_id is remembered (retries within it are ignored).",
    )
    local_history_users: int = Field(
        100_000, ge=1, description="Users kept by the in-process history (no Redis)."
    )

    # --- request limits -----------------------------------------------------------------
    max_k: int = Field(100, ge=1, description="Largest `k` a request may ask for.")
    max_batch: int = Field(64, ge=1, description="Largest /recommend/batch request.")
    max_recent_items: int = Field(
        200, ge=1, description="Longest `recent_items` / `exclude_items` list accepted."
    )
    max_events: int = Field(1000, ge=1, description="Most events in one /events call.")
    max_body_bytes: int = Field(262_144, ge=1024, description="Largest request body (413).")

    # --- compute ------------------------------------------------------------------------
    torch_threads: int = Field(1, ge=1, description="torch.set_num_threads for the user tower.")
    faiss_threads: int = Field(1, ge=1, description="OpenMP threads of FAISS searches.")
    traced_tower: bool = Field(
        True,
        description="Run the user tower as a TorchScript trace (checked against eager at "
        "load; same outputs, less Python per forward pass); false = eager.",
    )
    batch_max: int = Field(128, ge=1, description="Most cache misses in one forward pass.")

    # --- security -----------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        None, description="If set, every endpoint but /healthz and /readyz needs X-API-Key."
    )
    admin_api_key: SecretStr | None = Field(
        None,
        description="Key for /admin/* (sent as X-API-Key); unset = admin only when "
        "no API_KEY is set either.",
    )
    public_docs: bool = Field(
        False, description="Serve /docs and /openapi.json without the API key."
    )

    # --- dashboard (/ui) ------------------------------------------------------------
    ui_sample_s: float = Field(
        2.0, gt=0, description="The dashboard samples this replica's metrics this often."
    )
    ui_history_s: float = Field(
        600.0, gt=0, description="Seconds of metrics the dashboard keeps (its time series)."
    )
    exposure_answers: int = Field(
        1000, ge=1, description="The exposure panel covers this many last answers per worker."
    )
    ann_recall_sample: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of /recommend index searches re-run exactly in the background "
        "to measure the index's recall (towerrec_ann_recall); 0 = off.",
    )

    log_level: str = Field("info", description="Log level of the service loggers.")

    @field_validator("redis_url", "api_key", "admin_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        """``API_KEY=`` (e.g. compose's ``${API_KEY:-}``) means "not set", not "empty key"."""
        if isinstance(value, str) and not value.strip():
            return None
        return value
