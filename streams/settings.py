"""One settings tree, read once in ``main()`` from ``RISKMON_...`` environment variables.

Nested fields use ``__``: ``RISKMON_KAFKA__BOOTSTRAP=host:9092``,
``RISKMON_REDIS__URL=redis://host:6379/0`` (``redis+cluster://host:7000/0`` for a Redis Cluster), ``RISKMON_ALLOCATOR__BUDGET_YUAN=1e8``,
``RISKMON_TOPICS__INVOICES=invoices``. Secrets are :class:`~pydantic.SecretStr`.

**Credentials file.** ``scripts/services up`` writes the generated credentials of the local, locked
down services (Kafka SASL/SCRAM over TLS, Redis ACL user, the worker's HTTP token) into
``var/services/credentials.env`` (mode 0600, ``RISKMON_...=value`` lines). The settings read it by
themselves, below the environment: path ``RISKMON_CREDENTIALS_FILE``, else
``$RISKMON_VAR/credentials.env``, else ``<repo>/var/services/credentials.env``; used only when present.
Its Kafka values apply only when the environment names no other broker and sets no
``RISKMON_KAFKA__SECURITY_PROTOCOL``; its Redis values only when the environment names no other Redis
and sets no Redis password (:class:`CredentialsFileSource`). An explicit ``_env_prefix`` other than
``RISKMON_`` (tests that want no environment) ignores the file too.

Examples
--------
>>> s = Settings(_env_prefix="NOPE_")
>>> s.kafka.bootstrap, s.topics.invoices, s.allocator.solver
('127.0.0.1:9092', 'invoices', 'exact')
>>> s.model_copy(update={"topics": s.topics.prefixed("t1-")}).topics.credit_lines
't1-credit-lines'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streams.dataset import DEFAULT_DATA_DIR
from streams.ports import DEFAULT_DEDUP_WINDOW_MONTHS

if TYPE_CHECKING:
    from streams.alerts import AlertRules

_ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    group_id: str = "riskmon-worker"
    client_id: str = "riskmon"


class TopicSettings(_Section):
    invoices: str = "invoices"
    dlq: str = "invoices.dlq"
    scores: str = "enterprise-scores"
    credit_lines: str = "credit-lines"
    allocations: str = "credit-allocations"
    alerts: str = "risk-alerts"
    partitions: int = Field(default=4, ge=1)
    replication: int = Field(default=1, ge=1)
    # None: the broker's default. On a three-broker cluster: replication 3, min_insync_replicas 2
    # (a write acknowledged by acks=all survives the loss of any one broker)
    min_insync_replicas: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _insync_within_replication(self) -> TopicSettings:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication:
            raise ValueError(f"topics.min_insync_replicas ({self.min_insync_replicas}) exceeds topics.replication "
                             f"({self.replication}): every acks=all write would be refused")
        return self

    def prefixed(self, prefix: str) -> TopicSettings:
        """The same topics with names starting with ``prefix`` (tests use unique prefixes)."""
        names = ("invoices", "dlq", "scores", "credit_lines", "allocations", "alerts")
        return self.model_copy(update={n: prefix + getattr(self, n) for n in names})


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = None
    password: SecretStr | None = None
    ssl: bool = False
    ssl_ca_certs: Path | None = None
    prefix: str = "riskmon"
    socket_timeout_s: float = 5.0
    # months of issue dates whose event ids the feature store remembers per enterprise (its dedup window)
    dedup_window_months: int = Field(default=DEFAULT_DEDUP_WINDOW_MONTHS, ge=1, le=1200)


class WorkerSettings(_Section):
    #: Most messages per micro-batch (reached only under a backlog; a worker that keeps up takes what is there).
    #: 50 000 (was 10 000): per-enterprise costs are shared by more events; docs/performance.md, "Batch size".
    batch_size: int = Field(default=50_000, ge=1)
    batch_within_s: float = Field(default=0.5, gt=0)  # longest wait for messages when none are there
    #: Rescore the enterprises the folded batches touched at most once per this many seconds (0: after every batch);
    #: features are still folded per batch, and offsets are committed once the window's scores are acknowledged.
    rescore_within_s: float = Field(default=5.0, ge=0)
    overlap_writes: bool = True  # write batch n to Redis while batch n + 1 is decoded (False: one after the other)
    decode_process: bool = True  # decode batches in a process of their own (False: a thread of the worker)
    score_batch_size: int = Field(default=512, ge=1)
    metrics_port: int = Field(default=9108, ge=0, le=65535)  # 0: no HTTP server
    web_port: int = Field(default=6066, ge=1, le=65535)  # faust's own web server (/health lives here too)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    torch_threads: int = Field(default=1, ge=1)  # small batches: one thread is ~15x faster than two here
    # bearer token for state-changing HTTP endpoints (POST /allocate); None: those endpoints answer 403
    http_token: SecretStr | None = None


class IngestSettings(_Section):
    """The edge's policy: event-time bounds, amount ceiling, DLQ record size, watermark quorum (docs/faults.md)."""

    #: How far ahead of the Kafka record timestamp and of the worker's clock ``produced_at`` may be.
    max_clock_skew_s: float = Field(default=300.0, ge=0)
    #: The largest |amount|, |tax| or |total| of one invoice, in yuan (the real data's largest is 11.7 M).
    max_amount_yuan: float = Field(default=1e9, gt=0)
    #: The Kafka key must equal ``enterprise_id`` (events of one enterprise share one partition).
    require_key_match: bool = True
    #: The largest DLQ record, in bytes: under aiokafka's default ``max_request_size`` (1 MiB), the tighter of it
    #: and the broker's ``message.max.bytes`` (8 MiB in scripts/services), less room for the framing.
    max_dead_letter_bytes: int = Field(default=1024 * 1024 - 16 * 1024, ge=4096)
    #: The watermark moves to the k-th most recent latest issue date among registered clients
    #: (k = min(quorum, clients seen)): fewer than k clients, and no non-client, can push it.
    watermark_quorum: int = Field(default=3, ge=1)
    #: Decode with the compiled msgspec wire decoder (pydantic decides every message it does not accept).
    fast_decode: bool = True


class AllocatorSettings(_Section):
    interval_s: float = Field(default=10.0, gt=0)
    budget_yuan: float = Field(default=100_000_000.0, gt=0)
    solver: Literal["exact", "anneal", "rules"] = "exact"
    seed: int = 0
    min_scores: int = Field(default=1, ge=1)  # do not allocate before this many enterprises are scored
    max_deferrals: int = Field(default=6, ge=0)  # ticks skipped in a row while this worker reads a backlog (0: none)


class AlertSettings(_Section):
    """Early-warning thresholds (:mod:`streams.alerts`); ``enabled=False`` publishes no alerts."""

    enabled: bool = True
    pd_threshold: float = Field(default=0.5, gt=0, le=1)  # default probability that raises pd_threshold
    pd_step: float = Field(default=0.15, gt=0, le=1)  # rise since the previous score that raises pd_jump
    sales_drop: float = Field(default=0.5, gt=0, le=1)  # month-on-month fall of sales that raises sales_drop
    sales_min_yuan: float = Field(default=10_000.0, ge=0)  # ...when the earlier month sold at least this
    dlq_burst: int = Field(default=20, ge=1)  # dead letters of one producer within dlq_window_s
    dlq_window_s: float = Field(default=60.0, gt=0)

    def rules(self) -> AlertRules:
        from streams.alerts import AlertRules

        return AlertRules(self.pd_threshold, self.pd_step, self.sales_drop, self.sales_min_yuan, self.dlq_burst,
                          self.dlq_window_s)


class ConsoleSettings(_Section):
    """``riskmon console``: the read-only web console (loopback by default)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8088, ge=0, le=65535)
    page_size: int = Field(default=50, ge=1, le=1000)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RISKMON_", env_nested_delimiter="__", extra="forbid", frozen=True)

    app_id: str = "riskmon"
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    worker: WorkerSettings = WorkerSettings()
    ingest: IngestSettings = IngestSettings()
    allocator: AllocatorSettings = AllocatorSettings()
    alerts: AlertSettings = AlertSettings()
    console: ConsoleSettings = ConsoleSettings()
    bundle_dir: Path = _ROOT / "var" / "bundle"
    bundle_signing_key: Path = _ROOT / "var" / "keys" / "bundle-signing.key"  # `riskmon train` signs with it
    bundle_public_key: Path = _ROOT / "var" / "keys" / "bundle-signing.pub"  # loaders trust only this key
    accept_unsigned_bundles: bool = False  # load bundles without a signature (development only)
    credentials_file: Path | None = None  # read by CredentialsFileSource; here so that the name is known
    data_dir: Path = DEFAULT_DATA_DIR
    state_dir: Path = _ROOT / "var" / "faust"


    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        prefix = getattr(env_settings, "env_prefix", "RISKMON_")
        return init_settings, env_settings, CredentialsFileSource(settings_cls, prefix), dotenv_settings, file_secret_settings


def credentials_path(environ: Any = None) -> Path:
    """Where the generated credentials of the local services are (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get("RISKMON_CREDENTIALS_FILE"):
        return Path(env["RISKMON_CREDENTIALS_FILE"])
    if env.get("RISKMON_VAR"):
        return Path(env["RISKMON_VAR"]) / "credentials.env"
    return _ROOT / "var" / "services" / "credentials.env"


def _hostport(address: str) -> str:
    return address.split(",")[0].strip()


def _redis_hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


class CredentialsFileSource(PydanticBaseSettingsSource):
    """Values from the services' credentials file, below the environment (``RISKMON_`` prefix only).

    A section is taken only when it belongs to the services the environment points at: the Kafka
    lines when ``RISKMON_KAFKA__BOOTSTRAP`` is unset or names the file's broker and
    ``RISKMON_KAFKA__SECURITY_PROTOCOL`` is unset; the Redis lines when ``RISKMON_REDIS__URL`` is unset
    or names the file's host and port and no Redis password is set; the worker's HTTP token
    when ``RISKMON_WORKER__HTTP_TOKEN`` is unset. Unknown lines are ignored (the file also holds the
    other principals, for tools and tests).

    Examples
    --------
    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "c.env"
    >>> _ = f.write_text("RISKMON_KAFKA__BOOTSTRAP=127.0.0.1:9\\nRISKMON_KAFKA__SASL_USERNAME=w\\n")
    >>> CredentialsFileSource.values(f, {})["kafka"]
    {'bootstrap': '127.0.0.1:9', 'sasl_username': 'w'}
    >>> CredentialsFileSource.values(f, {"RISKMON_KAFKA__BOOTSTRAP": "elsewhere:9092"})
    {}
    """

    def __init__(self, settings_cls: type[BaseSettings], prefix: str) -> None:
        super().__init__(settings_cls)
        self._prefix = prefix

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self._prefix != "RISKMON_":
            return {}
        return self.values(credentials_path(), os.environ)

    @staticmethod
    def values(path: Path, environ: Any) -> dict[str, Any]:
        """The nested settings the file at ``path`` contributes, given the environment ``environ``."""
        from dotenv import dotenv_values

        if not path.is_file():
            return {}
        lines = {k: v for k, v in dotenv_values(path).items() if v is not None}
        out: dict[str, dict[str, str]] = {}
        for key, value in lines.items():
            section, _, field = key.removeprefix("RISKMON_").lower().partition("__")
            if key.startswith("RISKMON_") and field and section in ("kafka", "redis", "worker"):
                out.setdefault(section, {})[field] = value
        kafka, redis_, worker = out.get("kafka", {}), out.get("redis", {}), out.get("worker", {})
        env_bootstrap = environ.get("RISKMON_KAFKA__BOOTSTRAP")
        if environ.get("RISKMON_KAFKA__SECURITY_PROTOCOL") or (
                env_bootstrap and _hostport(env_bootstrap) != _hostport(kafka.get("bootstrap", ""))):
            kafka = {}
        env_url = environ.get("RISKMON_REDIS__URL")
        if environ.get("RISKMON_REDIS__PASSWORD") or (
                env_url and ("@" in env_url or _redis_hostport(env_url) != _redis_hostport(redis_.get("url", "")))):
            redis_ = {}
        worker = {k: v for k, v in worker.items() if k == "http_token" and not environ.get("RISKMON_WORKER__HTTP_TOKEN")}
        return {name: section for name, section in (("kafka", kafka), ("redis", redis_), ("worker", worker)) if section}
