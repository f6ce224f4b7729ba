"""Every setting Arbiter reads, typed, one class per concern: the only place that reads the environment.

Each field names its environment variable (`validation_alias`); README.md's "Configuration" table lists the same
variables (a test keeps the two in step). `load_settings()` reads them all once, when Django loads
`arbiter.config.settings`, and refuses to start on a wrong value with a message naming the variable. Code reads
the result through `arbiter_settings()` (`arbiter_settings().inference.max_batch`), never `os.environ`; tests
change it through the `override_arbiter_settings` fixture (`arbiter.testing.plugin`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic import model_validator as _model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from arbiter.config.services import ALL_SERVICES, ServiceConfigError, parse_services

DEVELOPMENT_SECRET_KEY = "arbiter-development-only-secret-key-change-me"
MiB = 1024 * 1024


class SettingsError(ImproperlyConfigured):
    """A setting is missing or wrong; the message names the environment variable."""


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be JSON ({exc})") from None
    return value


# Comma lists (`a, b`) rather than pydantic-settings' JSON lists: the variables predate this module.
CommaList = Annotated[tuple[str, ...], NoDecode]


class Concern(BaseSettings):
    """One concern's settings. Built from the environment; keyword arguments (field or variable names) win."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        env_ignore_empty=True,  # `VAR=` means unset, as it always has
        extra="ignore",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    @classmethod
    def variables(cls) -> tuple[str, ...]:
        """The environment variables this concern reads, in declaration order."""
        names: list[str] = []
        for field in cls.model_fields.values():
            alias = field.validation_alias
            if isinstance(alias, str):
                names.append(alias)
            elif isinstance(alias, AliasChoices):
                names.extend(str(choice) for choice in alias.choices)
        return tuple(names)


def _home(value: Any) -> Path:
    return Path(value or ".arbiter").resolve()


# ARBITER_HOME is read by every concern whose defaults live under it (blobs, the artifact cache).
Home = Annotated[Path, Field(default=Path(".arbiter"), validation_alias="ARBITER_HOME")]


class CoreSettings(Concern):
    env: str = Field("development", validation_alias="ARBITER_ENV")
    debug: bool = Field(False, validation_alias="ARBITER_DEBUG")
    home: Home
    services: Annotated[tuple[str, ...], NoDecode] = Field(ALL_SERVICES, validation_alias="ARBITER_SERVICES")
    secret_key: SecretStr | None = Field(None, validation_alias="ARBITER_SECRET_KEY")
    # None: `*` outside production, nothing in production.
    allowed_hosts: CommaList | None = Field(None, validation_alias="ARBITER_ALLOWED_HOSTS")
    csrf_trusted_origins: CommaList = Field((), validation_alias="ARBITER_CSRF_TRUSTED_ORIGINS")
    public_url: str = Field("http://127.0.0.1:8000", validation_alias="ARBITER_PUBLIC_URL")
    behind_tls_proxy: bool = Field(False, validation_alias="ARBITER_BEHIND_TLS_PROXY")
    # How long a process trusts an API key it looked up (revocations made elsewhere take this long); 0: never.
    api_key_cache_seconds: float = Field(5.0, ge=0, validation_alias="ARBITER_API_KEY_CACHE_SECONDS")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", validation_alias="ARBITER_LOG_LEVEL"
    )
    static_root: str | None = Field(None, validation_alias="ARBITER_STATIC_ROOT")
    offline_models: bool = Field(True, validation_alias="ARBITER_OFFLINE_MODELS")

    resolve_home = field_validator("home", mode="before")(_home)
    split_lists = field_validator("allowed_hosts", "csrf_trusted_origins", mode="before")(_split_commas)

    @field_validator("services", mode="before")
    @classmethod
    def _services(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            try:
                return parse_services(value)
            except ServiceConfigError as exc:
                raise ValueError(str(exc).removeprefix("ARBITER_SERVICES ")) from None
        return parse_services(",".join(value))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @_model_validator(mode="after")
    def _production(self) -> CoreSettings:
        if self.production and self.debug:
            raise ValueError("ARBITER_DEBUG must not be on when ARBITER_ENV=production")
        if self.production and self.secret_key is None:
            raise ValueError("ARBITER_SECRET_KEY is required when ARBITER_ENV=production")
        return self

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def django_secret_key(self) -> str:
        return self.secret_key.get_secret_value() if self.secret_key else DEVELOPMENT_SECRET_KEY

    @property
    def django_allowed_hosts(self) -> list[str]:
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        return [] if self.production else ["*"]


class WebSettings(Concern):
    """`arbiter serve` / `arbiter up`: where the web server (granian) listens, its worker processes and threads."""

    bind: str = Field("127.0.0.1:8000", validation_alias="ARBITER_BIND")
    workers: int = Field(1, ge=1, validation_alias="ARBITER_WEB_WORKERS")
    # A process serves at most `threads` requests at once, and the inference micro-batcher batches only requests
    # in flight: 32 lets 32 single-text clients share batches (16 held half of them in the poller).
    threads: int = Field(32, ge=1, validation_alias="ARBITER_WEB_THREADS")
    # `arbiter up --split` runs nginx in front of the services; empty: `nginx` on the PATH or /usr/sbin/nginx.
    nginx: str = Field("", validation_alias="ARBITER_NGINX")


SERVICE_URL_VARIABLES = {service: f"DATABASE_URL_{service.upper()}" for service in ALL_SERVICES}
DATABASE_SCHEMES = ("postgres", "postgresql", "sqlite")


def _database_url(value: Any) -> Any:
    if isinstance(value, str) and value.split("://", 1)[0] not in DATABASE_SCHEMES:
        raise ValueError("must be a postgres://user:pass@host:5432/name or sqlite:///path URL")
    return value


class DatabaseSettings(Concern):
    """Locally each service gets a SQLite file under ARBITER_HOME. With DATABASE_URL (PostgreSQL) every service
    gets its own database named `<dbname>_<service>` on that server; DATABASE_URL_<SERVICE> overrides one."""

    home: Home
    url: str | None = Field(None, validation_alias="DATABASE_URL")
    name_prefix: str | None = Field(None, validation_alias="ARBITER_DB_NAME")
    url_gateway: str | None = Field(None, validation_alias="DATABASE_URL_GATEWAY")
    url_dataset: str | None = Field(None, validation_alias="DATABASE_URL_DATASET")
    url_annotation: str | None = Field(None, validation_alias="DATABASE_URL_ANNOTATION")
    url_training: str | None = Field(None, validation_alias="DATABASE_URL_TRAINING")
    url_inference: str | None = Field(None, validation_alias="DATABASE_URL_INFERENCE")
    url_billing: str | None = Field(None, validation_alias="DATABASE_URL_BILLING")

    resolve_home = field_validator("home", mode="before")(_home)
    check_urls = field_validator("url", *(f"url_{s}" for s in ALL_SERVICES), mode="before")(_database_url)

    def service_database(self, service: str) -> dict[str, Any]:
        """The Django DATABASES entry of one service."""
        import dj_database_url

        own: str | None = getattr(self, f"url_{service}")
        if own:
            if own.startswith("sqlite"):
                return sqlite_database(Path(dj_database_url.parse(own)["NAME"]))
            return dict(dj_database_url.parse(own, conn_max_age=60, conn_health_checks=True))
        if self.url and not self.url.startswith("sqlite"):
            base = dict(dj_database_url.parse(self.url, conn_max_age=60, conn_health_checks=True))
            base["NAME"] = f"{self.name_prefix or base['NAME'] or 'arbiter'}_{service}"
            return base
        return sqlite_database(self.home / "db" / f"{service}.sqlite3")


def sqlite_database(path: Path) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "CONN_MAX_AGE": 60,
        # Several processes (web, relay, consumers, trainer) share these files locally: WAL lets readers
        # proceed beside one writer, and IMMEDIATE transactions avoid lock-upgrade deadlocks.
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        },
    }


class StorageSettings(Concern):
    """The blob store. For S3, boto3 reads the credentials itself (`AWS_ACCESS_KEY_ID`, profiles, roles)."""

    home: Home
    blob_store_url: str | None = Field(None, validation_alias="ARBITER_BLOB_STORE")
    endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    )
    region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))

    resolve_home = field_validator("home", mode="before")(_home)

    @property
    def blob_store(self) -> str:
        return self.blob_store_url or str(self.home / "blobs")


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class EventsSettings(Concern):
    bootstrap_servers: str | None = Field(None, validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    broker_storage: str = Field("memory://tansu/", validation_alias="ARBITER_BROKER_STORAGE")
    partitions: int = Field(4, ge=1, validation_alias="ARBITER_EVENTS_PARTITIONS")
    max_attempts: int = Field(5, ge=1, validation_alias="ARBITER_EVENTS_MAX_ATTEMPTS")
    retry_backoff_ms: int = Field(500, ge=0, validation_alias="ARBITER_EVENTS_RETRY_BACKOFF_MS")
    session_timeout_ms: int = Field(6000, ge=100, validation_alias="ARBITER_EVENTS_SESSION_TIMEOUT_MS")
    relay_batch_size: int = Field(1000, ge=1, validation_alias="ARBITER_RELAY_BATCH_SIZE")
    outbox_retention_days: int = Field(7, ge=0, validation_alias="ARBITER_OUTBOX_RETENTION_DAYS")


class KafkaSecuritySettings(Concern):
    """How every Kafka client authenticates and encrypts: plaintext (the default), TLS, SASL or both."""

    security_protocol: SecurityProtocol = Field("PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL")
    sasl_mechanism: SaslMechanism = Field("PLAIN", validation_alias="KAFKA_SASL_MECHANISM")
    sasl_username: str | None = Field(None, validation_alias="KAFKA_SASL_USERNAME")
    sasl_password: SecretStr | None = Field(None, validation_alias="KAFKA_SASL_PASSWORD")
    ssl_cafile: Path | None = Field(None, validation_alias="KAFKA_SSL_CAFILE")
    ssl_certfile: Path | None = Field(None, validation_alias="KAFKA_SSL_CERTFILE")
    ssl_keyfile: Path | None = Field(None, validation_alias="KAFKA_SSL_KEYFILE")

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @_model_validator(mode="after")
    def _consistent(self) -> KafkaSecuritySettings:
        protocol = self.security_protocol
        if self.sasl:
            missing = [
                name
                for name, value in (
                    ("KAFKA_SASL_USERNAME", self.sasl_username),
                    ("KAFKA_SASL_PASSWORD", self.sasl_password),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)}")
        elif self.sasl_username or self.sasl_password:
            raise ValueError(
                f"KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD are set but KAFKA_SECURITY_PROTOCOL={protocol} does not "
                "use them: choose SASL_SSL or SASL_PLAINTEXT"
            )
        files = [
            name
            for name, value in (
                ("KAFKA_SSL_CAFILE", self.ssl_cafile),
                ("KAFKA_SSL_CERTFILE", self.ssl_certfile),
                ("KAFKA_SSL_KEYFILE", self.ssl_keyfile),
            )
            if value
        ]
        if files and not self.tls:
            raise ValueError(
                f"{', '.join(files)} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS: choose SSL or SASL_SSL"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError(
                "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (a client certificate and its key)"
            )
        return self

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def client_config(self) -> dict[str, Any]:
        """kafka-python's keyword arguments for these settings, the same for producers, consumers and admins.

        Certificate files are checked here, when a client is made, rather than at start-up: processes that never
        talk to Kafka (trainer Jobs, the migration hook) get the same variables without the files mounted.
        """
        config: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.tls:
            # Verify the broker's certificate and that it names the host we asked for, as Kafka's clients do.
            config["ssl_check_hostname"] = True
            for name, option, path in (
                ("KAFKA_SSL_CAFILE", "ssl_cafile", self.ssl_cafile),
                ("KAFKA_SSL_CERTFILE", "ssl_certfile", self.ssl_certfile),
                ("KAFKA_SSL_KEYFILE", "ssl_keyfile", self.ssl_keyfile),
            ):
                if path is None:
                    continue
                if not path.is_file():
                    raise SettingsError(f"{name}={path} is not a readable file")
                config[option] = str(path)
        return config


class TrainingSettings(Concern):
    """The training operator: which executor runs trainers, how many at once, how often it reconciles."""

    executor: Literal["local", "kubernetes"] = Field("local", validation_alias="ARBITER_TRAINING_EXECUTOR")
    # None: 1 with the local executor, no limit with Kubernetes (the cluster queues Jobs that wait for a GPU).
    concurrency: int | None = Field(None, ge=0, validation_alias="ARBITER_TRAINING_CONCURRENCY")
    interval_s: float = Field(2.0, gt=0, validation_alias="ARBITER_OPERATOR_INTERVAL_SECONDS")
    # A request naming what another service announces by event (a snapshot, for a model; a trained version,
    # for a deployment) waits this long for it, then fails.
    wait_for_events_s: float = Field(600.0, gt=0, validation_alias="ARBITER_WAIT_FOR_EVENTS_SECONDS")
    # A trainer still running this long past its run's time budget (options.time_budget_minutes) is stopped and
    # the run failed: the grace covers loading, the final evaluation, the ONNX export and the upload.
    budget_grace_s: float = Field(600.0, ge=0, validation_alias="ARBITER_TRAINING_BUDGET_GRACE_SECONDS")

    @property
    def trainer_slots(self) -> int | None:
        """How many trainers may run at once; None: no limit."""
        concurrency = (
            self.concurrency if self.concurrency is not None else (1 if self.executor == "local" else 0)
        )
        return concurrency or None


@dataclass(frozen=True)
class SecretKeyRef:
    secret: str
    key: str


class KubernetesSettings(Concern):
    """The trainer Jobs of the Kubernetes executor (`ARBITER_K8S_*`); read only by the operator."""

    # Required by the Kubernetes executor (see `checked()`); other processes never need it.
    image: str = Field("", validation_alias="ARBITER_K8S_IMAGE")
    namespace: str = Field("default", validation_alias="ARBITER_K8S_NAMESPACE")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", validation_alias="ARBITER_K8S_IMAGE_PULL_POLICY"
    )
    image_pull_secrets: CommaList = Field((), validation_alias="ARBITER_K8S_IMAGE_PULL_SECRETS")
    gpu_count: int = Field(1, ge=0, validation_alias="ARBITER_K8S_GPU_COUNT")
    cpu: str = Field("", validation_alias="ARBITER_K8S_CPU")
    memory: str = Field("", validation_alias="ARBITER_K8S_MEMORY")
    node_selector: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, validation_alias="ARBITER_K8S_NODE_SELECTOR"
    )
    tolerations: Annotated[tuple[dict[str, Any], ...], NoDecode] = Field(
        (), validation_alias="ARBITER_K8S_TOLERATIONS"
    )
    service_account: str = Field("", validation_alias="ARBITER_K8S_SERVICE_ACCOUNT")
    env_from_secrets: CommaList = Field((), validation_alias="ARBITER_K8S_ENV_FROM_SECRETS")
    env_from_config_maps: CommaList = Field((), validation_alias="ARBITER_K8S_ENV_FROM_CONFIGMAPS")
    secret_env: Annotated[dict[str, SecretKeyRef], NoDecode] = Field(
        default_factory=dict, validation_alias="ARBITER_K8S_SECRET_ENV"
    )
    backoff_limit: int = Field(2, ge=0, validation_alias="ARBITER_K8S_BACKOFF_LIMIT")
    active_deadline_seconds: int = Field(
        6 * 3600, ge=1, validation_alias="ARBITER_K8S_ACTIVE_DEADLINE_SECONDS"
    )
    ttl_seconds_after_finished: int = Field(
        3600, ge=0, validation_alias="ARBITER_K8S_TTL_SECONDS_AFTER_FINISHED"
    )

    split_lists = field_validator(
        "image_pull_secrets", "env_from_secrets", "env_from_config_maps", mode="before"
    )(_split_commas)

    @field_validator("node_selector", mode="before")
    @classmethod
    def _node_selector(cls, value: Any) -> Any:
        value = _json(value)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ValueError('must be a JSON object of strings, e.g. {"gpu": "a100"}')
        return value

    @field_validator("tolerations", mode="before")
    @classmethod
    def _tolerations(cls, value: Any) -> Any:
        value = _json(value)
        if not isinstance(value, list | tuple) or not all(isinstance(t, dict) for t in value):
            raise ValueError(
                'must be a JSON list of tolerations, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists"}]'
            )
        return tuple(value)

    @field_validator("secret_env", mode="before")
    @classmethod
    def _secret_env(cls, value: Any) -> Any:
        value = _json(value)
        if not isinstance(value, dict):
            raise ValueError('must be a JSON object like {"DATABASE_URL": "secret/key"}')
        refs: dict[str, SecretKeyRef] = {}
        for name, ref in value.items():
            if isinstance(ref, SecretKeyRef):
                refs[name] = ref
                continue
            secret, _, key = str(ref).partition("/")
            if not secret or not key:
                raise ValueError(f"[{name!r}] must be 'secret-name/key', not {ref!r}")
            refs[name] = SecretKeyRef(secret=secret, key=key)
        return refs

    def checked(self) -> KubernetesSettings:
        """These settings, once sure that they can build a Job."""
        if not self.image:
            raise SettingsError("ARBITER_K8S_IMAGE is required when ARBITER_TRAINING_EXECUTOR=kubernetes")
        return self


class DatasetSettings(Concern):
    """Limits of the dataset service."""

    max_upload_bytes: int = Field(512 * MiB, ge=1, validation_alias="ARBITER_MAX_UPLOAD_BYTES")
    import_background_bytes: int = Field(4 * MiB, ge=0, validation_alias="ARBITER_IMPORT_BACKGROUND_BYTES")
    import_max_rows: int = Field(5_000_000, ge=1, validation_alias="ARBITER_IMPORT_MAX_ROWS")
    import_max_columns: int = Field(1_000, ge=1, validation_alias="ARBITER_IMPORT_MAX_COLUMNS")
    xlsx_max_uncompressed_bytes: int = Field(
        512 * MiB, ge=1, validation_alias="ARBITER_XLSX_MAX_UNCOMPRESSED_BYTES"
    )
    # Zips of images with the table naming them: the most files listed and bytes once inflated (zip bombs).
    zip_max_files: int = Field(100_000, ge=1, validation_alias="ARBITER_ZIP_MAX_FILES")
    zip_max_uncompressed_bytes: int = Field(
        2 * 1024 * MiB, ge=1, validation_alias="ARBITER_ZIP_MAX_UNCOMPRESSED_BYTES"
    )
    snapshot_max_tokens: int = Field(512, ge=1, validation_alias="ARBITER_SNAPSHOT_MAX_TOKENS")
    mapping_background_rows: int = Field(20_000, ge=0, validation_alias="ARBITER_MAPPING_BACKGROUND_ROWS")


class InferenceSettings(Concern):
    """The inference service (see services/inference/README.md)."""

    home: Home
    # Loaded models of one process share this budget; the least recently used ones are unloaded beyond it.
    memory_mb: int = Field(2048, ge=1, validation_alias="ARBITER_INFERENCE_MEMORY_MB")
    max_inputs: int = Field(256, ge=1, validation_alias="ARBITER_INFERENCE_MAX_INPUTS")
    max_input_chars: int = Field(20_000, ge=1, validation_alias="ARBITER_INFERENCE_MAX_INPUT_CHARS")
    # Micro-batching: concurrent requests to one model run together, up to `max_batch` texts, waiting at
    # most `batch_wait_ms` for company once a request arrives. None: by runtime (services/inference/serving/
    # cache.py: 8 for ONNX Runtime's one-core runners, 32 for torch).
    max_batch: int | None = Field(None, ge=1, validation_alias="ARBITER_INFERENCE_MAX_BATCH")
    # How long a process trusts a live deployment it looked up for a classify call (a stop made by another
    # replica takes this long to be seen); 0: look it up on every call.
    deployment_cache_seconds: float = Field(
        2.0, ge=0, validation_alias="ARBITER_INFERENCE_DEPLOYMENT_CACHE_SECONDS"
    )
    batch_wait_ms: float = Field(1.5, ge=0, validation_alias="ARBITER_INFERENCE_BATCH_WAIT_MS")
    # Under concurrent calls a usage commit waits this long for company (`arbiter.groupcommit`); a lone call
    # commits at once.
    usage_linger_ms: float = Field(4.0, ge=0, validation_alias="ARBITER_INFERENCE_USAGE_LINGER_MS")
    runtime: Literal["auto", "onnx", "torch"] = Field("auto", validation_alias="ARBITER_INFERENCE_RUNTIME")
    # ONNX Runtime runs one batch per runner thread at a time, each with `threads` intra-op threads.
    runners: int = Field(
        default_factory=lambda: max(1, min(4, os.cpu_count() or 1)),
        ge=1,
        validation_alias="ARBITER_INFERENCE_RUNNERS",
    )
    threads: int = Field(1, ge=1, validation_alias="ARBITER_INFERENCE_THREADS")
    artifact_cache_dir: Path | None = Field(None, validation_alias="ARBITER_INFERENCE_ARTIFACT_CACHE")
    # None (`auto`): warm live deployments in web servers only (`arbiter serve`); True/False forces it on or off.
    preload: bool | None = Field(None, validation_alias="ARBITER_INFERENCE_PRELOAD")
    log_retention_days: int = Field(30, ge=1, validation_alias="ARBITER_INFERENCE_LOG_RETENTION_DAYS")
    max_log_retention_days: int = Field(
        365, ge=1, validation_alias="ARBITER_INFERENCE_MAX_LOG_RETENTION_DAYS"
    )

    resolve_home = field_validator("home", mode="before")(_home)

    @field_validator("preload", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == "auto" else value

    @property
    def artifact_cache(self) -> Path:
        return self.artifact_cache_dir or self.home / "inference" / "artifacts"


class WebhookSettings(Concern):
    """Webhook deliveries (the gateway's delivery worker) and the egress guard's allow-list for them."""

    # CIDRs webhook URLs may reach although private, loopback or link-local (tests and local use: 127.0.0.0/8).
    allowed_networks: CommaList = Field((), validation_alias="ARBITER_WEBHOOK_ALLOWED_NETWORKS")
    # Seconds before each attempt: the first is the delay of the first attempt (0: at once).
    retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        (0, 5, 300, 1800, 7200, 18000, 36000, 36000), validation_alias="ARBITER_WEBHOOK_RETRY_SCHEDULE"
    )
    timeout_s: float = Field(10.0, gt=0, validation_alias="ARBITER_WEBHOOK_TIMEOUT_SECONDS")
    # An endpoint failing for this long (no success since its first failure) is disabled.
    disable_after_s: float = Field(
        5 * 24 * 3600, gt=0, validation_alias="ARBITER_WEBHOOK_DISABLE_AFTER_SECONDS"
    )
    workers: int = Field(16, ge=1, validation_alias="ARBITER_WEBHOOK_WORKERS")
    endpoint_concurrency: int = Field(4, ge=1, validation_alias="ARBITER_WEBHOOK_ENDPOINT_CONCURRENCY")
    poll_s: float = Field(0.25, gt=0, validation_alias="ARBITER_WEBHOOK_POLL_SECONDS")
    secret_overlap_s: float = Field(
        24 * 3600, ge=0, validation_alias="ARBITER_WEBHOOK_SECRET_OVERLAP_SECONDS"
    )

    split_networks = field_validator("allowed_networks", mode="before")(_split_commas)

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        parts = _split_commas(value)
        if not parts:
            raise ValueError("needs at least one delay (seconds), e.g. 0,5,300")
        return parts

    @field_validator("retry_schedule")
    @classmethod
    def _non_negative(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay < 0 for delay in value):
            raise ValueError("delays must be 0 or more seconds")
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a CIDR such as 127.0.0.0/8") from None
        return value


class LlmSettings(Concern):
    """Calls to OpenAI-compatible endpoints (`arbiter.llm`), through the egress guard."""

    # CIDRs LLM endpoints may reach although private or loopback (a self-hosted model; tests: 127.0.0.0/8).
    allowed_networks: CommaList = Field((), validation_alias="ARBITER_LLM_ALLOWED_NETWORKS")
    timeout_s: float = Field(60.0, gt=0, validation_alias="ARBITER_LLM_TIMEOUT_SECONDS")
    # Attempts per call: timeouts, 429 (after its Retry-After) and 5xx are tried again, with backoff.
    max_attempts: int = Field(4, ge=1, validation_alias="ARBITER_LLM_MAX_ATTEMPTS")
    retry_max_s: float = Field(60.0, gt=0, validation_alias="ARBITER_LLM_RETRY_MAX_SECONDS")
    # Calls in flight at once per endpoint and process.
    concurrency: int = Field(4, ge=1, validation_alias="ARBITER_LLM_CONCURRENCY")
    # Policy evaluations of up to this many rows finish within the request; larger ones run in the background.
    policy_inline_rows: int = Field(50, ge=0, validation_alias="ARBITER_POLICY_INLINE_ROWS")
    # A background policy evaluation whose heartbeat is older than this is taken as dead and resumed.
    policy_stale_after_s: float = Field(300.0, gt=0, validation_alias="ARBITER_POLICY_STALE_SECONDS")

    split_networks = field_validator("allowed_networks", mode="before")(_split_commas)

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a CIDR such as 127.0.0.0/8") from None
        return value


class FetchSettings(Concern):
    """Fetching images a customer named by URL (`arbiter.images`: dataset image columns, image inputs at inference),
    through the egress guard."""

    # CIDRs image URLs may reach although private, loopback or link-local (local use and tests: 127.0.0.0/8).
    allowed_networks: CommaList = Field((), validation_alias="ARBITER_FETCH_ALLOWED_NETWORKS")
    timeout_s: float = Field(15.0, gt=0, validation_alias="ARBITER_FETCH_TIMEOUT_SECONDS")
    max_bytes: int = Field(20 * MiB, ge=1, validation_alias="ARBITER_FETCH_MAX_BYTES")
    # Width x height above which an image is refused before it is decoded (a decompression bomb).
    max_pixels: int = Field(40_000_000, ge=1, validation_alias="ARBITER_FETCH_MAX_PIXELS")
    max_redirects: int = Field(3, ge=0, validation_alias="ARBITER_FETCH_MAX_REDIRECTS")
    # Fetches in flight at once per dataset fetch job.
    concurrency: int = Field(8, ge=1, validation_alias="ARBITER_FETCH_CONCURRENCY")

    split_networks = field_validator("allowed_networks", mode="before")(_split_commas)

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a CIDR such as 127.0.0.0/8") from None
        return value


class AnnotationSettings(Concern):
    """Auto-labeling jobs of the annotation service."""

    # Similarity jobs of at most this many rows run within the request ("try 10 first"); others in the background.
    inline_rows: int = Field(100, ge=0, validation_alias="ARBITER_ANNOTATION_INLINE_ROWS")
    # A job whose first this many rows all fail stops there and says why.
    fail_fast_rows: int = Field(10, ge=1, validation_alias="ARBITER_ANNOTATION_FAIL_FAST_ROWS")
    # A running job whose process has not moved its heartbeat for this long is recovered by the sweep.
    stale_after_s: float = Field(300.0, gt=0, validation_alias="ARBITER_ANNOTATION_STALE_SECONDS")


class EmailSettings(Concern):
    """Email (Django's mail over SMTP), e.g. telling whoever started an auto-labeling job that it finished."""

    # smtp://user:pass@host:587?tls=True, smtps://..., console://, or unset: no email is sent.
    url: str | None = Field(None, validation_alias="ARBITER_EMAIL_URL")
    from_address: str = Field("Arbiter <arbiter@localhost>", validation_alias="ARBITER_EMAIL_FROM")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        import dj_email_url

        if value and "EMAIL_BACKEND" not in dj_email_url.parse(value):
            raise ValueError(
                f"{value.split('://')[0]!r} is not an email URL scheme: use smtp://, smtps:// or console://"
            )
        return value or None

    def connection_options(self) -> dict[str, Any] | None:
        """Keyword arguments of `django.core.mail.get_connection` for the URL (None: email is off)."""
        import dj_email_url

        if not self.url:
            return None
        parsed = dj_email_url.parse(self.url)
        return {
            "backend": parsed["EMAIL_BACKEND"],
            "host": parsed["EMAIL_HOST"],
            "port": parsed["EMAIL_PORT"],
            "username": parsed["EMAIL_HOST_USER"],
            "password": parsed["EMAIL_HOST_PASSWORD"],
            "use_tls": parsed["EMAIL_USE_TLS"],
            "use_ssl": parsed["EMAIL_USE_SSL"],
            "timeout": parsed["EMAIL_TIMEOUT"],
        }


# llm_call: a call a policy makes to its language model (serving a decision not cached yet, or evaluating).
METERS = ("classification", "playground", "auto_label", "training_minute", "llm_call")
MeterName = Literal["classification", "playground", "auto_label", "training_minute", "llm_call"]


class MeterAllowance(BaseModel):
    """What a plan includes of one meter each month (the playground: per model, for good) and what happens beyond."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # None: unlimited.
    included: int | None = Field(0, ge=0)
    # Beyond `included`: metered and billed (True, needs a paid plan with a payment method) or refused (False).
    overage: bool = False


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = ""
    # A paid plan is billed; with Stripe configured its overage needs a payment method.
    paid: bool = False
    meters: dict[MeterName, MeterAllowance] = Field(default_factory=dict)

    def allowance(self, meter: str) -> MeterAllowance:
        found = self.meters.get(meter)  # type: ignore[call-overload]
        return found if isinstance(found, MeterAllowance) else MeterAllowance(included=0, overage=False)


def _builtin_plans(playground_free: int) -> dict[str, dict[str, Any]]:
    def meters(included: dict[str, int | None], overage: bool) -> dict[str, dict[str, Any]]:
        return {name: {"included": amount, "overage": overage} for name, amount in included.items()}

    return {
        "free": {
            "label": "Free",
            "paid": False,
            "meters": meters(
                {
                    "classification": 10_000,
                    "playground": playground_free,
                    "auto_label": 1_000,
                    "training_minute": 60,
                    "llm_call": 1_000,
                },
                overage=False,
            ),
        },
        "pro": {
            "label": "Pro",
            "paid": True,
            "meters": meters(
                {
                    "classification": 100_000,
                    "playground": playground_free,
                    "auto_label": 10_000,
                    "training_minute": 600,
                    "llm_call": 20_000,
                },
                overage=True,
            ),
        },
        "enterprise": {"label": "Enterprise", "paid": True, "meters": meters(dict.fromkeys(METERS), True)},
    }


class BillingSettings(Concern):
    """Plans, quotas and Stripe (see services/billing/README.md)."""

    default_plan: str = Field("free", validation_alias="ARBITER_BILLING_DEFAULT_PLAN")
    # Merged over the built-in plans: {"free": {"meters": {"playground": {"included": 3}}}, "team": {...}}.
    plan_overrides: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict, validation_alias="ARBITER_BILLING_PLANS"
    )
    playground_free_queries: int = Field(500, ge=0, validation_alias="ARBITER_PLAYGROUND_FREE_QUERIES")
    # Without news from billing for this long, a paid plan's last entitlements stop applying (see the README).
    grace_hours: float = Field(72.0, gt=0, validation_alias="ARBITER_BILLING_GRACE_HOURS")
    refresh_seconds: float = Field(3600.0, gt=0, validation_alias="ARBITER_BILLING_REFRESH_SECONDS")
    payment_grace_days: float = Field(7.0, ge=0, validation_alias="ARBITER_BILLING_PAYMENT_GRACE_DAYS")
    stripe_api_key: SecretStr | None = Field(None, validation_alias="STRIPE_API_KEY")
    stripe_webhook_secret: SecretStr | None = Field(None, validation_alias="STRIPE_WEBHOOK_SECRET")
    stripe_api_base: str | None = Field(None, validation_alias="ARBITER_STRIPE_API_BASE")
    report_batch: int = Field(100, ge=1, validation_alias="ARBITER_BILLING_REPORT_BATCH")

    @field_validator("plan_overrides", mode="before")
    @classmethod
    def _plans_json(cls, value: Any) -> Any:
        value = _json(value)
        if not isinstance(value, dict):
            raise ValueError(
                'must be a JSON object of plans, e.g. {"free": {"meters": {"playground": {"included": 3}}}}'
            )
        return value

    @_model_validator(mode="after")
    def _valid_plans(self) -> BillingSettings:
        plans = self.plans
        if self.default_plan not in plans:
            raise ValueError(
                f"ARBITER_BILLING_DEFAULT_PLAN={self.default_plan!r} is not a plan ({', '.join(plans)})"
            )
        return self

    @functools.cached_property
    def plans(self) -> dict[str, Plan]:
        merged = _builtin_plans(self.playground_free_queries)
        for name, override in self.plan_overrides.items():
            if not isinstance(override, dict):
                raise ValueError(f"ARBITER_BILLING_PLANS: {name}: must be an object")
            # A new plan starts from the free plan's allowances: it names only what differs.
            free_meters = {meter: dict(allowance) for meter, allowance in merged["free"]["meters"].items()}
            base = merged.setdefault(name, {"label": name.title(), "meters": free_meters})
            for key, value in override.items():
                if key == "meters" and isinstance(value, dict):
                    for meter, allowance in value.items():
                        base["meters"][meter] = {**base["meters"].get(meter, {}), **(allowance or {})}
                else:
                    base[key] = value
        plans: dict[str, Plan] = {}
        for name, body in merged.items():
            try:
                plans[name] = Plan.model_validate(body)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in (name, *first["loc"]))
                raise ValueError(f"ARBITER_BILLING_PLANS: {where}: {first['msg']}") from None
        return plans

    @property
    def stripe_enabled(self) -> bool:
        return self.stripe_api_key is not None


class TelemetrySettings(Concern):
    """The standard OpenTelemetry variables Arbiter itself looks at; the SDK reads the rest (`OTEL_*`)."""

    traces_exporter: str = Field("", validation_alias="OTEL_TRACES_EXPORTER")
    otlp_endpoint: str | None = Field(None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    service_name: str | None = Field(None, validation_alias="OTEL_SERVICE_NAME")
    sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")

    @field_validator("traces_exporter", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def tracing_requested(self) -> bool:
        """`otlp` or `console` exporters, or just an OTLP endpoint; `OTEL_SDK_DISABLED=true` wins."""
        if self.sdk_disabled:
            return False
        if self.traces_exporter in ("otlp", "console"):
            return True
        return self.traces_exporter != "none" and bool(self.otlp_endpoint)


class ArbiterSettings(BaseModel):
    """All of Arbiter's settings, one attribute per concern."""

    model_config = ConfigDict(frozen=True)

    CONCERNS: ClassVar[dict[str, type[Concern]]] = {
        "core": CoreSettings,
        "web": WebSettings,
        "databases": DatabaseSettings,
        "storage": StorageSettings,
        "events": EventsSettings,
        "kafka": KafkaSecuritySettings,
        "training": TrainingSettings,
        "kubernetes": KubernetesSettings,
        "dataset": DatasetSettings,
        "inference": InferenceSettings,
        "billing": BillingSettings,
        "telemetry": TelemetrySettings,
        "webhooks": WebhookSettings,
        "llm": LlmSettings,
        "fetch": FetchSettings,
        "annotation": AnnotationSettings,
        "email": EmailSettings,
    }

    core: CoreSettings
    web: WebSettings
    databases: DatabaseSettings
    storage: StorageSettings
    events: EventsSettings
    kafka: KafkaSecuritySettings
    training: TrainingSettings
    kubernetes: KubernetesSettings
    dataset: DatasetSettings
    inference: InferenceSettings
    billing: BillingSettings
    telemetry: TelemetrySettings
    webhooks: WebhookSettings
    llm: LlmSettings
    fetch: FetchSettings
    annotation: AnnotationSettings
    email: EmailSettings


def all_variables() -> tuple[str, ...]:
    """Every environment variable Arbiter reads, each once."""
    seen: dict[str, None] = {}
    for concern in ArbiterSettings.CONCERNS.values():
        seen.update(dict.fromkeys(concern.variables()))
    return tuple(seen)


# Values never repeated in an error message: they may hold credentials.
_SECRET = ("DATABASE_URL", "PASSWORD", "SECRET", "API_KEY")


def _problem(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "is wrong")).removeprefix("Value error, ")
    if not where:  # a check across several variables: its message names them
        return message
    shown = "input" in error and not isinstance(error["input"], dict) and error.get("type") != "missing"
    if shown and not any(part in where for part in _SECRET):
        return f"{where}: {message[:1].lower()}{message[1:]}, got {error['input']!r}"
    return f"{where}: {message[:1].lower()}{message[1:]}"


def load_settings(overrides: Mapping[str, Any] | None = None) -> ArbiterSettings:
    """Read every concern from the environment; `overrides` ({variable: value}) win. A wrong value raises
    SettingsError listing every problem, each naming its variable."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(all_variables()))
    if unknown:
        raise SettingsError(f"unknown settings {unknown}: see arbiter.config.typed_settings")
    concerns: dict[str, Concern] = {}
    problems: list[str] = []
    for name, concern in ArbiterSettings.CONCERNS.items():
        mine = {key: value for key, value in overrides.items() if key in concern.variables()}
        try:
            concerns[name] = concern(**mine)
        except ValidationError as exc:
            problems.extend(_problem(error) for error in exc.errors())
    if problems:
        raise SettingsError("Arbiter's settings are wrong:\n  " + "\n  ".join(problems))
    return ArbiterSettings(**concerns)  # type: ignore[arg-type]


# The object Django's settings hold, once read: `settings.ARBITER` cost about 8 us a read (Django's LazySettings
# probes the value for `_mask_wrapped`, which a pydantic model answers by raising), and a classify call read it
# several times. Forgotten whenever Django says the setting changed (`override_settings`, pytest-django's
# `settings`).
_loaded: ArbiterSettings | None = None


def arbiter_settings() -> ArbiterSettings:
    """This process's settings: the object Django's settings loaded (and tests may have replaced)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    from django.conf import settings

    try:
        loaded = getattr(settings, "ARBITER", None)
    except ImproperlyConfigured:  # used outside Django (a script): read the environment now
        loaded = None
    if isinstance(loaded, ArbiterSettings):
        _loaded = loaded
        return loaded
    return load_settings()


def _forget_loaded(*, setting: str, **_: Any) -> None:
    global _loaded
    if setting == "ARBITER":
        _loaded = None


setting_changed.connect(_forget_loaded, dispatch_uid="arbiter.config.typed_settings")


def django_mirrors(typed: ArbiterSettings) -> dict[str, Any]:
    """The Django settings that repeat a typed value (code outside this module reads them from django.conf)."""
    return {
        "ARBITER_ENV": typed.core.env,
        "ARBITER_HOME": typed.core.home,
        "ARBITER_SERVICES": typed.core.services,
        "ARBITER_PUBLIC_URL": typed.core.public_url,
        "ARBITER_MAX_UPLOAD_BYTES": typed.dataset.max_upload_bytes,
    }
