"""Configuration from environment variables, validated once at start-up.

One pydantic-settings model per concern, each field naming its variable. Every problem raises
:class:`ConfigError` naming the variable, so a bad deployment fails fast with a message an
operator can act on. Secrets are ``SecretStr`` and kept out of ``repr``, so settings can be
logged.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from service.environment import (
    CommaSeparated,
    EnvGroup,
    EnvSettings,
    Flag,
    HttpUrl,
    Networks,
    Topic,
    load,
    variable,
)
from service.errors import ConfigError

MIB = 1024 * 1024
_GROUP_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,249}")
_FLOW_DEFINITION_ARN = re.compile(
    r"arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]+:[0-9]{12}:flow-definition/[a-z0-9](-*[a-z0-9])*"
)

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
LocalModel = Literal["opennsfw", "safety", "nudenet"]
ContentClassifier = Literal["FreeOfPersonallyIdentifiableInformation", "FreeOfAdultContent"]
CONTENT_CLASSIFIERS: tuple[str, ...] = get_args(ContentClassifier)


def default_sink_data_dir() -> Path:
    """Under the system's temporary directory, so a read-only image root is never written."""
    return Path(tempfile.gettempdir()) / "moderation-sink"


def _group_instance_id(value: str) -> str:
    if not _GROUP_INSTANCE_ID.fullmatch(value):
        raise ValueError(f"must be 1-249 of the characters A-Z a-z 0-9 . _ - (got {value!r})")
    return value


def _flow_definition_arn(value: str) -> str:
    if not _FLOW_DEFINITION_ARN.fullmatch(value):
        raise ValueError("expected arn:aws:sagemaker:<region>:<account>:flow-definition/<name>")
    return value


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def _data_directory(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, got {str(path)!r}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"exists and is not a directory: {path}")
    return path


class KafkaSettings(EnvGroup):
    bootstrap_servers: str | None = variable("KAFKA_BOOTSTRAP_SERVERS", None)  # None: embedded
    group_id: str = variable("MODERATION_GROUP_ID", "image-moderation")
    input_topic: Topic = variable("MODERATION_INPUT_TOPIC", "moderation.requests")
    approved_topic: Topic = variable("MODERATION_APPROVED_TOPIC", "moderation.approved")
    rejected_topic: Topic = variable("MODERATION_REJECTED_TOPIC", "moderation.rejected")
    review_topic: Topic = variable("MODERATION_REVIEW_TOPIC", "moderation.review")
    dlq_topic: Topic = variable("MODERATION_DLQ_TOPIC", "moderation.dlq")
    # The embedded broker (Tansu) refuses InitProducerId v0, so idempotence is off there.
    enable_idempotence: Flag = variable(
        "KAFKA_ENABLE_IDEMPOTENCE", default_factory=lambda d: d["bootstrap_servers"] is not None
    )
    security_protocol: SecurityProtocol = variable("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    sasl_mechanism: SaslMechanism | None = variable("KAFKA_SASL_MECHANISM", None)
    sasl_username: str | None = variable("KAFKA_SASL_USERNAME", None)
    sasl_password: SecretStr | None = variable("KAFKA_SASL_PASSWORD", None, repr=False)
    session_timeout_ms: int = variable("KAFKA_SESSION_TIMEOUT_MS", 10_000, ge=1_000, le=300_000)
    max_input_bytes: int = variable("MODERATION_MAX_INPUT_BYTES", 8 * MIB, ge=1024, le=64 * MIB)
    # Apache Kafka answers a fetch as soon as data arrives; the embedded Tansu broker holds it
    # for the full max wait, so there the wait is kept short (it is added latency).
    fetch_max_wait_ms: int = variable(
        "KAFKA_FETCH_MAX_WAIT_MS",
        default_factory=lambda d: 500 if d["bootstrap_servers"] is not None else 20,
        ge=1,
        le=30_000,
    )
    # Static membership (KIP-345): a stable member name.
    group_instance_id: Annotated[str, AfterValidator(_group_instance_id)] | None = variable(
        "KAFKA_GROUP_INSTANCE_ID", None
    )
    # A group unsettled for longer is reported (metric, /readyz)...
    rebalance_stall_s: float = variable("KAFKA_REBALANCE_STALL_S", 120.0, ge=1, le=3600)
    # ...and, past that, freed from a departed leader the broker still names (Tansu's bug).
    rebalance_recovery: Flag = variable("KAFKA_REBALANCE_RECOVERY", True)
    # exactly_once: outputs and input offsets commit in one Kafka transaction per partition.
    processing_guarantee: ProcessingGuarantee = variable(
        "MODERATION_PROCESSING_GUARANTEE", "at_least_once"
    )

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ConfigError("KAFKA_SASL_MECHANISM", f"required with {self.security_protocol}")
        seen: dict[str, str] = {}
        for env, topic in self.topics_by_variable().items():
            if topic in seen:
                raise ConfigError(env, f"topic {topic!r} is already used by {seen[topic]}")
            seen[topic] = env
        if self.processing_guarantee == "exactly_once" and self.bootstrap_servers is None:
            raise ConfigError(
                "MODERATION_PROCESSING_GUARANTEE",
                "exactly_once needs Kafka transactions, which the embedded broker (Tansu) does "
                "not have: set KAFKA_BOOTSTRAP_SERVERS to a broker that does, or use "
                "at_least_once",
            )
        return self

    def topics_by_variable(self) -> dict[str, str]:
        """The pipeline's topics, each under the variable that names it."""
        return {
            "MODERATION_INPUT_TOPIC": self.input_topic,
            "MODERATION_APPROVED_TOPIC": self.approved_topic,
            "MODERATION_REJECTED_TOPIC": self.rejected_topic,
            "MODERATION_REVIEW_TOPIC": self.review_topic,
            "MODERATION_DLQ_TOPIC": self.dlq_topic,
        }


def _cores() -> int:
    """The cores this process may run on: the default size of its CPU-bound pools."""
    return len(os.sched_getaffinity(0))


class LocalModelSettings(EnvGroup):
    """The offline backend (``.[local]`` extra): models shipped in wheels, a bounded pool."""

    models: Annotated[tuple[LocalModel, ...], CommaSeparated] = variable(
        "MODERATION_LOCAL_MODELS", ("opennsfw", "safety")
    )
    workers: int = variable(
        "MODERATION_LOCAL_WORKERS",
        default_factory=_cores,
        ge=1,
        le=256,
    )
    threads_per_worker: int = variable("MODERATION_LOCAL_THREADS_PER_WORKER", 1, ge=1, le=64)
    max_queue: int = variable("MODERATION_LOCAL_MAX_QUEUE", 32, ge=0, le=10_000)
    model_paths: tuple[tuple[str, Path], ...] = variable("MODERATION_LOCAL_MODEL_PATHS", ())
    read_s3: Flag = variable("MODERATION_LOCAL_READ_S3", False)
    s3_endpoint_url: HttpUrl | None = variable("MODERATION_LOCAL_S3_ENDPOINT_URL", None)

    @field_validator("model_paths", mode="before")
    @classmethod
    def _model_equals_path(cls, value: Any, info: ValidationInfo) -> Any:
        """``opennsfw=/models/a.onnx,nudenet=/models/b.onnx``, for models in use only."""
        if not isinstance(value, str):
            return value
        paths: list[tuple[str, Path]] = []
        for item in value.split(","):
            if not item.strip():
                continue
            name, sep, path = item.partition("=")
            if not sep or name.strip() not in info.data.get("models", ()):
                raise ValueError(f"expected model=path, got {item!r}")
            paths.append((name.strip(), Path(path.strip())))
        return tuple(paths)


class BackendSettings(EnvGroup):
    region: str | None = variable(AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"), None)
    endpoint_url: HttpUrl | None = variable("REKOGNITION_ENDPOINT_URL", None)
    # Without any AWS configuration the offline model is the sensible default.
    kind: Literal["rekognition", "local"] = variable(
        "MODERATION_BACKEND",
        default_factory=lambda d: "rekognition" if d["region"] or d["endpoint_url"] else "local",
    )
    local: LocalModelSettings = Field(default_factory=LocalModelSettings)
    # The local model's capacity is this machine's cores, not an AWS quota.
    tps: float = variable(
        "MODERATION_TPS",
        default_factory=lambda d: 5.0 if d["kind"] == "rekognition" else 50.0 * d["local"].workers,
        ge=0.1,
        le=100_000,
    )
    # A small burst: quotas are enforced over short windows, and a full second's worth of calls
    # at once after an idle spell is exactly what gets throttled.
    tps_burst: float = variable(
        "MODERATION_TPS_BURST", default_factory=lambda d: max(1.0, d["tps"] / 10), ge=1, le=1e6
    )
    max_in_flight: int = variable("MODERATION_MAX_IN_FLIGHT", 512, ge=1, le=10_000)
    max_attempts: int = variable("MODERATION_MAX_ATTEMPTS", 5, ge=1, le=100)
    call_timeout_s: float = variable("MODERATION_CALL_TIMEOUT_S", 30.0, ge=0.1, le=600)
    default_min_confidence: float = variable("MODERATION_MIN_CONFIDENCE", 50.0, ge=0, le=100)
    max_in_flight_bytes: int = variable(
        "MODERATION_MAX_IN_FLIGHT_BYTES", 256 * MIB, ge=MIB, le=64 * 1024 * MIB
    )

    @field_validator("local", mode="wrap")
    @classmethod
    def _only_for_the_local_backend(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        """Its variables count only when it is the backend: stray ones never stop Rekognition."""
        if info.data.get("kind") != "local" and isinstance(value, Mapping):
            return LocalModelSettings()
        return handler(value)

    @model_validator(mode="after")
    def _region_for_rekognition(self) -> BackendSettings:
        if self.kind == "rekognition" and self.region is None:
            raise ConfigError("AWS_REGION", "required for the Rekognition backend (e.g. us-east-1)")
        return self


class FetchSettings(EnvGroup):
    timeout_s: float = variable("MODERATION_FETCH_TIMEOUT_S", 10.0, ge=0.1, le=300)
    # Originals by URL or from S3 are scaled down anyway: a phone's 48 MP photo is welcome.
    max_bytes: int = variable("MODERATION_FETCH_MAX_BYTES", 50 * MIB, ge=1024, le=1024 * MIB)
    allowed_networks: Networks = variable("MODERATION_FETCH_ALLOWED_NETWORKS", ())


class ImageSettings(EnvGroup):
    """Decoding and normalization (service.imaging): bounds checked before anything decodes."""

    # Width x height of one frame or canvas decoded at most (image bombs, pixel floods).
    max_pixels: int = variable("MODERATION_MAX_IMAGE_PIXELS", 100_000_000, ge=6_400, le=500_000_000)
    max_frames: int = variable("MODERATION_MAX_FRAMES", 5, ge=1, le=100)
    decode_workers: int = variable(
        "MODERATION_DECODE_WORKERS",
        default_factory=_cores,
        ge=1,
        le=256,
    )
    decode_timeout_s: float = variable("MODERATION_DECODE_TIMEOUT_S", 20.0, ge=0.1, le=600)
    jpeg_quality: int = variable("MODERATION_JPEG_QUALITY", 90, ge=50, le=100)


def _read_conditions(data: dict[str, Any]) -> str | None:
    path: Path | None = data["activation_conditions_file"]
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("MODERATION_ACTIVATION_CONDITIONS_FILE", str(exc)) from exc


class ReviewSettings(EnvGroup):
    """Human review: when to ask people, through which path, and what to do when they can't."""

    activation_conditions_file: Path | None = variable(
        "MODERATION_ACTIVATION_CONDITIONS_FILE", None
    )
    # A2I HumanLoopActivationConditions JSON, inline or from the file; parsed at start.
    activation_conditions: str | None = variable(
        "MODERATION_ACTIVATION_CONDITIONS", default_factory=_read_conditions
    )
    # Set: managed A2I via Rekognition's HumanLoopConfig.
    flow_definition_arn: Annotated[str, AfterValidator(_flow_definition_arn)] | None = variable(
        "A2I_FLOW_DEFINITION_ARN", None
    )
    content_classifiers: Annotated[tuple[ContentClassifier, ...], CommaSeparated] = variable(
        "A2I_CONTENT_CLASSIFIERS", ()
    )
    quota_fallback: Literal["hold", "policy"] = variable("MODERATION_REVIEW_QUOTA_FALLBACK", "hold")
    sla_s: float = variable("MODERATION_REVIEW_SLA_S", 86_400.0, ge=1, le=30 * 86_400)
    fallback: Literal["reject", "approve", "requeue"] = variable(
        "MODERATION_REVIEW_FALLBACK", "reject"
    )
    consensus: Literal["any", "majority"] = variable("MODERATION_REVIEW_CONSENSUS", "any")
    completions_topic: Topic = variable(
        "MODERATION_COMPLETIONS_TOPIC", "moderation.review.completions"
    )
    s3_endpoint_url: HttpUrl | None = variable("S3_ENDPOINT_URL", None)
    # Directory for file:// outputs (embedded setup / self-hosted console).
    local_store: Path | None = variable("MODERATION_REVIEW_LOCAL_STORE", None)
    # The completion sink's bounds.
    # An event whose review record never came is dead-lettered then.
    orphan_ttl_s: float = variable("MODERATION_SINK_ORPHAN_TTL_S", 3600.0, ge=1, le=30 * 86_400)
    # Events held for loops without a review record, at most.
    max_early: int = variable("MODERATION_SINK_MAX_EARLY", 100_000, ge=1, le=10_000_000)
    # Completion events are small; larger ones go to the DLQ.
    max_event_bytes: int = variable(
        "MODERATION_SINK_MAX_EVENT_BYTES", 256 * 1024, ge=1024, le=64 * MIB
    )
    # How long an unavailable output store is retried per event.
    output_retry_s: float = variable("MODERATION_SINK_OUTPUT_RETRY_S", 300.0, ge=1, le=86_400)
    # /healthz fails when the sink's worker has not beaten for this long.
    liveness_s: float = variable("MODERATION_SINK_LIVENESS_S", 60.0, ge=5, le=3600)

    @model_validator(mode="after")
    def _conditions_from_one_place(self) -> ReviewSettings:
        if self.activation_conditions_file is not None and "activation_conditions" in (
            self.model_fields_set
        ):
            raise ConfigError(
                "MODERATION_ACTIVATION_CONDITIONS_FILE",
                "set either it or MODERATION_ACTIVATION_CONDITIONS, not both",
            )
        return self

    @property
    def activation_source(self) -> str:
        """Where the activation conditions came from, for errors."""
        if self.activation_conditions_file is not None:
            return f"MODERATION_ACTIVATION_CONDITIONS_FILE ({self.activation_conditions_file})"
        return "MODERATION_ACTIVATION_CONDITIONS"


class SafetySettings(EnvGroup):
    """The safety valves: how much gets dead-lettered before intake stops, when work is stuck."""

    dlq_max_record_bytes: int = variable(
        "MODERATION_DLQ_MAX_RECORD_BYTES", 1_000_000, ge=16 * 1024, le=64 * MIB
    )
    guard_window: int = variable("MODERATION_DLQ_GUARD_WINDOW", 500, ge=10, le=1_000_000)
    guard_min_samples: int = variable(
        "MODERATION_DLQ_GUARD_MIN_SAMPLES",
        default_factory=lambda d: min(100, d["guard_window"]),
        ge=1,
    )
    # 1 turns this limit off.
    guard_max_input_ratio: float = variable("MODERATION_DLQ_MAX_RATIO", 0.9, ge=0.01, le=1)
    guard_max_internal_ratio: float = variable(
        "MODERATION_DLQ_MAX_INTERNAL_RATIO", 0.05, ge=0, le=1
    )
    guard_cooldown_s: float = variable("MODERATION_DLQ_GUARD_COOLDOWN_S", 300.0, ge=1, le=86_400)
    stuck_after_s: float = variable("MODERATION_STUCK_AFTER_S", 300.0, ge=1, le=86_400)

    @model_validator(mode="after")
    def _samples_fit_the_window(self) -> SafetySettings:
        if self.guard_min_samples > self.guard_window:
            raise ConfigError(
                "MODERATION_DLQ_GUARD_MIN_SAMPLES",
                f"must be at most MODERATION_DLQ_GUARD_WINDOW ({self.guard_window}), "
                f"got {self.guard_min_samples}",
            )
        return self


class Settings(EnvSettings):
    kafka: KafkaSettings
    backend: BackendSettings
    fetch: FetchSettings
    images: ImageSettings
    review: ReviewSettings
    policy_file: Annotated[Path, AfterValidator(_existing_file)] | None = variable(
        "MODERATION_POLICY_FILE", None
    )
    reject_threshold: float = variable("MODERATION_REJECT_THRESHOLD", 80.0, ge=0, le=100)
    review_threshold: float = variable("MODERATION_REVIEW_THRESHOLD", 50.0, ge=0, le=100)
    shutdown_grace_s: float = variable("MODERATION_SHUTDOWN_GRACE_S", 25.0, ge=0, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = variable(
        "LOG_LEVEL", "INFO"
    )
    log_format: Literal["json", "text"] = variable("LOG_FORMAT", "json")
    # 16 on Tansu: one record per batch (end_offsets bug).
    sink_producer_max_batch_size: int = variable(
        "SINK_PRODUCER_MAX_BATCH_SIZE", 16_384, ge=16, le=16 * MIB
    )
    # Probes come from the node.
    http_host: str = variable("MODERATION_HTTP_HOST", "0.0.0.0")  # noqa: S104
    http_port: int = variable("MODERATION_HTTP_PORT", 8080, ge=0, le=65535)  # 0: a free port
    safety: SafetySettings
    # faust's data directory (it creates one even with the memory store): never the cwd.
    sink_data_dir: Annotated[Path, AfterValidator(_data_directory)] = variable(
        "MODERATION_SINK_DATA_DIR", default_factory=default_sink_data_dir
    )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.review_threshold > self.reject_threshold:
            raise ConfigError(
                "MODERATION_REVIEW_THRESHOLD",
                "must not exceed MODERATION_REJECT_THRESHOLD "
                f"({self.review_threshold} > {self.reject_threshold})",
            )
        completions = self.review.completions_topic
        if completions in self.kafka.topics_by_variable().values():
            raise ConfigError(
                "MODERATION_COMPLETIONS_TOPIC", f"topic {completions!r} is already used"
            )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return load(cls, env)
