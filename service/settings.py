"""Configuration from environment variables, validated once at start-up.

Every problem raises :class:`ConfigError` naming the variable, so a bad deployment fails fast with
a message an operator can act on. Secrets are kept out of ``repr`` so settings can be logged.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from service.errors import ConfigError

T = TypeVar("T")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")  # what Kafka itself accepts

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ProcessingGuarantee = Literal["at_least_once", "exactly_once"]


def default_sink_data_dir() -> Path:
    """Under the system's temporary directory, so a read-only image root is never written."""
    return Path(tempfile.gettempdir()) / "moderation-sink"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str | None  # None: start the embedded broker
    group_id: str
    input_topic: str
    approved_topic: str
    rejected_topic: str
    review_topic: str
    dlq_topic: str
    enable_idempotence: bool
    security_protocol: SecurityProtocol
    sasl_mechanism: SaslMechanism | None
    sasl_username: str | None
    sasl_password: str | None = field(repr=False)
    session_timeout_ms: int
    max_input_bytes: int
    fetch_max_wait_ms: int
    group_instance_id: str | None = None  # static membership (KIP-345): a stable member name
    rebalance_stall_s: float = 120.0  # a group unsettled for longer is reported (metric, /readyz)
    # ...and, past that, freed from a departed leader the broker still names (Tansu's bug).
    rebalance_recovery: bool = True
    # exactly_once: outputs and input offsets commit in one Kafka transaction per partition.
    processing_guarantee: ProcessingGuarantee = "at_least_once"


@dataclass(frozen=True)
class LocalModelSettings:
    """The offline backend (``.[local]`` extra): models shipped in wheels, a bounded pool."""

    models: tuple[str, ...] = ("opennsfw",)
    workers: int = 2
    threads_per_worker: int = 1
    max_queue: int = 32
    model_paths: tuple[tuple[str, Path], ...] = ()
    read_s3: bool = False
    s3_endpoint_url: str | None = None
    max_image_pixels: int = 40_000_000  # width x height decoded at most (image bombs)


@dataclass(frozen=True)
class BackendSettings:
    kind: Literal["rekognition", "local"]
    region: str | None
    endpoint_url: str | None
    tps: float
    tps_burst: float
    max_in_flight: int
    max_attempts: int
    call_timeout_s: float
    default_min_confidence: float
    max_in_flight_bytes: int = 256 * 1024 * 1024
    local: LocalModelSettings = field(default_factory=LocalModelSettings)


@dataclass(frozen=True)
class FetchSettings:
    timeout_s: float
    max_bytes: int
    allowed_networks: tuple[IpNetwork, ...]


ContentClassifier = Literal["FreeOfPersonallyIdentifiableInformation", "FreeOfAdultContent"]
CONTENT_CLASSIFIERS: tuple[str, ...] = (
    "FreeOfPersonallyIdentifiableInformation",
    "FreeOfAdultContent",
)
_FLOW_DEFINITION_ARN = re.compile(
    r"arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]+:[0-9]{12}:flow-definition/[a-z0-9](-*[a-z0-9])*"
)


@dataclass(frozen=True)
class ReviewSettings:
    """Human review: when to ask people, through which path, and what to do when they can't."""

    activation_conditions: str | None  # A2I HumanLoopActivationConditions JSON, parsed at start
    activation_source: str  # the variable (or file) the conditions came from, for errors
    flow_definition_arn: str | None  # set: managed A2I via Rekognition's HumanLoopConfig
    content_classifiers: tuple[ContentClassifier, ...]
    quota_fallback: Literal["hold", "policy"]
    sla_s: float
    fallback: Literal["reject", "approve", "requeue"]
    consensus: Literal["any", "majority"]
    completions_topic: str
    s3_endpoint_url: str | None
    local_store: Path | None  # directory for file:// outputs (embedded setup / self-hosted console)
    # The completion sink's bounds (defaults here so other constructions stay valid).
    orphan_ttl_s: float = 3600.0  # an event whose review record never came is dead-lettered then
    max_early: int = 100_000  # events held for loops without a review record, at most
    max_event_bytes: int = 256 * 1024  # completion events are small; larger ones go to the DLQ
    output_retry_s: float = 300.0  # how long an unavailable output store is retried per event
    liveness_s: float = 60.0  # /healthz fails when the sink's worker has not beaten for this long


@dataclass(frozen=True)
class SafetySettings:
    """The safety valves: how much gets dead-lettered before intake stops, when work is stuck."""

    dlq_max_record_bytes: int = 1_000_000
    guard_window: int = 500
    guard_min_samples: int = 100
    guard_max_input_ratio: float = 0.9  # 1 turns this limit off
    guard_max_internal_ratio: float = 0.05
    guard_cooldown_s: float = 300.0
    stuck_after_s: float = 300.0


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    backend: BackendSettings
    fetch: FetchSettings
    review: ReviewSettings
    policy_file: Path | None
    reject_threshold: float
    review_threshold: float
    shutdown_grace_s: float
    log_level: str
    log_format: Literal["json", "text"]
    sink_producer_max_batch_size: int  # 16 on Tansu: one record per batch (end_offsets bug)
    http_host: str
    http_port: int  # 0 picks a free port (tests)
    safety: SafetySettings = field(default_factory=SafetySettings)
    #: faust's data directory (it creates one even with the memory store): never the cwd.
    sink_data_dir: Path = field(default_factory=default_sink_data_dir)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return EnvReader(env).settings()


MIB = 1024 * 1024


class EnvReader:
    """Reads typed values out of an environment mapping; each error names its variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def parsed(self, name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(name, f"expected {expected}, got {value!r}") from exc

    def number(self, name: str, default: float, *, low: float, high: float = math.inf) -> float:
        value = self.parsed(name, default, float, "a number")
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(name, f"must be between {low} and {high}, got {value}")
        return value

    def integer(self, name: str, default: int, *, low: int, high: int = 2**31) -> int:
        value = self.parsed(name, default, int, "an integer")
        if not low <= value <= high:
            raise ConfigError(name, f"must be between {low} and {high}, got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(name, f"expected true or false, got {value!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def topic(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if len(value) > 249 or value in {".", ".."} or not _TOPIC_NAME.fullmatch(value):
            raise ConfigError(name, f"not a valid Kafka topic name: {value!r}")
        return value

    def networks(self, name: str) -> tuple[IpNetwork, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        try:
            return tuple(
                ipaddress.ip_network(part.strip(), strict=False)
                for part in value.split(",")
                if part.strip()
            )
        except ValueError as exc:
            raise ConfigError(name, f"expected comma-separated CIDR networks: {exc}") from exc

    def settings(self) -> Settings:
        kafka = self.kafka()
        backend = self.backend()
        fetch = FetchSettings(
            timeout_s=self.number("MODERATION_FETCH_TIMEOUT_S", 10.0, low=0.1, high=300),
            max_bytes=self.integer("MODERATION_FETCH_MAX_BYTES", 5 * MIB, low=1024, high=5 * MIB),
            allowed_networks=self.networks("MODERATION_FETCH_ALLOWED_NETWORKS"),
        )
        reject = self.number("MODERATION_REJECT_THRESHOLD", 80.0, low=0, high=100)
        review = self.number("MODERATION_REVIEW_THRESHOLD", 50.0, low=0, high=100)
        if review > reject:
            raise ConfigError(
                "MODERATION_REVIEW_THRESHOLD",
                f"must not exceed MODERATION_REJECT_THRESHOLD ({review} > {reject})",
            )
        policy = self.raw("MODERATION_POLICY_FILE")
        policy_file = Path(policy) if policy else None
        if policy_file is not None and not policy_file.is_file():
            raise ConfigError("MODERATION_POLICY_FILE", f"no such file: {policy_file}")
        return Settings(
            kafka=kafka,
            backend=backend,
            fetch=fetch,
            review=self.review(kafka),
            policy_file=policy_file,
            reject_threshold=reject,
            review_threshold=review,
            shutdown_grace_s=self.number("MODERATION_SHUTDOWN_GRACE_S", 25.0, low=0, high=3600),
            log_level=self.choice(
                "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
            ),
            log_format=self.choice("LOG_FORMAT", "json", ("json", "text")),  # type: ignore[arg-type]
            http_host=self.text("MODERATION_HTTP_HOST", "0.0.0.0"),  # noqa: S104  (probes come from the node)
            http_port=self.integer("MODERATION_HTTP_PORT", 8080, low=0, high=65535),
            sink_producer_max_batch_size=self.integer(
                "SINK_PRODUCER_MAX_BATCH_SIZE", 16_384, low=16, high=16 * MIB
            ),
            safety=self.safety(),
            sink_data_dir=self.sink_data_dir(),
        )

    def sink_data_dir(self) -> Path:
        name = "MODERATION_SINK_DATA_DIR"
        value = self.raw(name)
        path = Path(value) if value else default_sink_data_dir()
        if not path.is_absolute():
            raise ConfigError(name, f"must be an absolute path, got {value!r}")
        if path.exists() and not path.is_dir():
            raise ConfigError(name, f"exists and is not a directory: {path}")
        return path

    def safety(self) -> SafetySettings:
        window = self.integer("MODERATION_DLQ_GUARD_WINDOW", 500, low=10, high=1_000_000)
        return SafetySettings(
            dlq_max_record_bytes=self.integer(
                "MODERATION_DLQ_MAX_RECORD_BYTES", 1_000_000, low=16 * 1024, high=64 * MIB
            ),
            guard_window=window,
            guard_min_samples=self.integer(
                "MODERATION_DLQ_GUARD_MIN_SAMPLES", min(100, window), low=1, high=window
            ),
            guard_max_input_ratio=self.number("MODERATION_DLQ_MAX_RATIO", 0.9, low=0.01, high=1),
            guard_max_internal_ratio=self.number(
                "MODERATION_DLQ_MAX_INTERNAL_RATIO", 0.05, low=0.0, high=1
            ),
            guard_cooldown_s=self.number(
                "MODERATION_DLQ_GUARD_COOLDOWN_S", 300.0, low=1, high=86_400
            ),
            stuck_after_s=self.number("MODERATION_STUCK_AFTER_S", 300.0, low=1, high=86_400),
        )

    def kafka(self) -> KafkaSettings:
        bootstrap = self.raw("KAFKA_BOOTSTRAP_SERVERS")
        protocol = self.choice(
            "KAFKA_SECURITY_PROTOCOL",
            "PLAINTEXT",
            ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        )
        mechanism = self.raw("KAFKA_SASL_MECHANISM")
        if mechanism is not None and mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ConfigError(
                "KAFKA_SASL_MECHANISM", "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            )
        if protocol.startswith("SASL") and mechanism is None:
            raise ConfigError("KAFKA_SASL_MECHANISM", f"required with {protocol}")
        topics = {
            "MODERATION_INPUT_TOPIC": self.topic("MODERATION_INPUT_TOPIC", "moderation.requests"),
            "MODERATION_APPROVED_TOPIC": self.topic(
                "MODERATION_APPROVED_TOPIC", "moderation.approved"
            ),
            "MODERATION_REJECTED_TOPIC": self.topic(
                "MODERATION_REJECTED_TOPIC", "moderation.rejected"
            ),
            "MODERATION_REVIEW_TOPIC": self.topic("MODERATION_REVIEW_TOPIC", "moderation.review"),
            "MODERATION_DLQ_TOPIC": self.topic("MODERATION_DLQ_TOPIC", "moderation.dlq"),
        }
        seen: dict[str, str] = {}
        for variable, topic in topics.items():
            if topic in seen:
                raise ConfigError(variable, f"topic {topic!r} is already used by {seen[topic]}")
            seen[topic] = variable
        return KafkaSettings(
            bootstrap_servers=bootstrap,
            group_id=self.text("MODERATION_GROUP_ID", "image-moderation"),
            input_topic=topics["MODERATION_INPUT_TOPIC"],
            approved_topic=topics["MODERATION_APPROVED_TOPIC"],
            rejected_topic=topics["MODERATION_REJECTED_TOPIC"],
            review_topic=topics["MODERATION_REVIEW_TOPIC"],
            dlq_topic=topics["MODERATION_DLQ_TOPIC"],
            # The embedded broker (Tansu) refuses InitProducerId v0, so idempotence is off there.
            enable_idempotence=self.boolean("KAFKA_ENABLE_IDEMPOTENCE", bootstrap is not None),
            security_protocol=protocol,  # type: ignore[arg-type]  # checked by choice()
            sasl_mechanism=mechanism,  # type: ignore[arg-type]  # checked above
            sasl_username=self.raw("KAFKA_SASL_USERNAME"),
            sasl_password=self.raw("KAFKA_SASL_PASSWORD"),
            session_timeout_ms=self.integer(
                "KAFKA_SESSION_TIMEOUT_MS", 10_000, low=1_000, high=300_000
            ),
            max_input_bytes=self.integer(
                "MODERATION_MAX_INPUT_BYTES", 8 * MIB, low=1024, high=64 * MIB
            ),
            # Apache Kafka answers a fetch as soon as data arrives; the embedded Tansu broker holds
            # it for the full max wait, so there the wait is kept short (it is added latency).
            fetch_max_wait_ms=self.integer(
                "KAFKA_FETCH_MAX_WAIT_MS", 500 if bootstrap is not None else 20, low=1, high=30_000
            ),
            group_instance_id=self.instance_id("KAFKA_GROUP_INSTANCE_ID"),
            rebalance_stall_s=self.number("KAFKA_REBALANCE_STALL_S", 120.0, low=1, high=3600),
            rebalance_recovery=self.boolean("KAFKA_REBALANCE_RECOVERY", True),
            processing_guarantee=self.guarantee("MODERATION_PROCESSING_GUARANTEE", bootstrap),
        )

    def guarantee(self, name: str, bootstrap: str | None) -> ProcessingGuarantee:
        value = self.choice(name, "at_least_once", ("at_least_once", "exactly_once"))
        if value == "exactly_once" and bootstrap is None:
            raise ConfigError(
                name,
                "exactly_once needs Kafka transactions, which the embedded broker (Tansu) does "
                "not have: set KAFKA_BOOTSTRAP_SERVERS to a broker that does, or use "
                "at_least_once",
            )
        return value  # type: ignore[return-value]  # checked by choice()

    def instance_id(self, name: str) -> str | None:
        value = self.raw(name)
        if value is not None and (len(value) > 249 or not _TOPIC_NAME.fullmatch(value)):
            raise ConfigError(
                name, f"must be 1-249 of the characters A-Z a-z 0-9 . _ - (got {value!r})"
            )
        return value

    def review(self, kafka: KafkaSettings) -> ReviewSettings:
        inline = self.raw("MODERATION_ACTIVATION_CONDITIONS")
        path = self.raw("MODERATION_ACTIVATION_CONDITIONS_FILE")
        if inline is not None and path is not None:
            raise ConfigError(
                "MODERATION_ACTIVATION_CONDITIONS_FILE",
                "set either it or MODERATION_ACTIVATION_CONDITIONS, not both",
            )
        conditions, source = inline, "MODERATION_ACTIVATION_CONDITIONS"
        if path is not None:
            source = f"MODERATION_ACTIVATION_CONDITIONS_FILE ({path})"
            try:
                conditions = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError("MODERATION_ACTIVATION_CONDITIONS_FILE", str(exc)) from exc
        arn = self.raw("A2I_FLOW_DEFINITION_ARN")
        if arn is not None and not _FLOW_DEFINITION_ARN.fullmatch(arn):
            raise ConfigError(
                "A2I_FLOW_DEFINITION_ARN",
                "expected arn:aws:sagemaker:<region>:<account>:flow-definition/<name>",
            )
        classifiers = tuple(
            part.strip()
            for part in (self.raw("A2I_CONTENT_CLASSIFIERS") or "").split(",")
            if part.strip()
        )
        for classifier in classifiers:
            if classifier not in CONTENT_CLASSIFIERS:
                raise ConfigError(
                    "A2I_CONTENT_CLASSIFIERS",
                    f"{classifier!r} is not one of {', '.join(CONTENT_CLASSIFIERS)}",
                )
        completions = self.topic("MODERATION_COMPLETIONS_TOPIC", "moderation.review.completions")
        if completions in {
            kafka.input_topic,
            kafka.approved_topic,
            kafka.rejected_topic,
            kafka.review_topic,
            kafka.dlq_topic,
        }:
            raise ConfigError(
                "MODERATION_COMPLETIONS_TOPIC", f"topic {completions!r} is already used"
            )
        s3_endpoint = self.raw("S3_ENDPOINT_URL")
        if s3_endpoint is not None and not s3_endpoint.startswith(("http://", "https://")):
            raise ConfigError("S3_ENDPOINT_URL", f"expected an http(s) URL: {s3_endpoint!r}")
        return ReviewSettings(
            activation_conditions=conditions,
            activation_source=source,
            flow_definition_arn=arn,
            content_classifiers=classifiers,  # type: ignore[arg-type]  # checked above
            quota_fallback=self.choice(
                "MODERATION_REVIEW_QUOTA_FALLBACK", "hold", ("hold", "policy")
            ),  # type: ignore[arg-type]
            sla_s=self.number("MODERATION_REVIEW_SLA_S", 86_400.0, low=1, high=30 * 86_400),
            fallback=self.choice(
                "MODERATION_REVIEW_FALLBACK", "reject", ("reject", "approve", "requeue")
            ),  # type: ignore[arg-type]
            consensus=self.choice("MODERATION_REVIEW_CONSENSUS", "any", ("any", "majority")),  # type: ignore[arg-type]
            completions_topic=completions,
            s3_endpoint_url=s3_endpoint,
            local_store=Path(store)
            if (store := self.raw("MODERATION_REVIEW_LOCAL_STORE"))
            else None,
            orphan_ttl_s=self.number(
                "MODERATION_SINK_ORPHAN_TTL_S", 3600.0, low=1, high=30 * 86_400
            ),
            max_early=self.integer("MODERATION_SINK_MAX_EARLY", 100_000, low=1, high=10_000_000),
            max_event_bytes=self.integer(
                "MODERATION_SINK_MAX_EVENT_BYTES", 256 * 1024, low=1024, high=64 * MIB
            ),
            output_retry_s=self.number("MODERATION_SINK_OUTPUT_RETRY_S", 300.0, low=1, high=86_400),
            liveness_s=self.number("MODERATION_SINK_LIVENESS_S", 60.0, low=5, high=3600),
        )

    def backend(self) -> BackendSettings:
        region = self.raw("AWS_REGION") or self.raw("AWS_DEFAULT_REGION")
        endpoint = self.raw("REKOGNITION_ENDPOINT_URL")
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigError("REKOGNITION_ENDPOINT_URL", f"expected an http(s) URL: {endpoint!r}")
        # Without any AWS configuration the offline model is the sensible default.
        aws_configured = region is not None or endpoint is not None
        kind = self.choice(
            "MODERATION_BACKEND",
            "rekognition" if aws_configured else "local",
            ("rekognition", "local"),
        )
        if kind == "rekognition" and region is None:
            raise ConfigError("AWS_REGION", "required for the Rekognition backend (e.g. us-east-1)")
        local = self.local_model() if kind == "local" else LocalModelSettings()
        # The local model's capacity is this machine's cores, not an AWS quota.
        default_tps = 5.0 if kind == "rekognition" else 50.0 * local.workers
        tps = self.number("MODERATION_TPS", default_tps, low=0.1, high=100_000)
        # A small burst: quotas are enforced over short windows, and a full second's worth of
        # calls at once after an idle spell is exactly what gets throttled.
        burst = self.number("MODERATION_TPS_BURST", max(1.0, tps / 10), low=1, high=1_000_000)
        return BackendSettings(
            kind=kind,  # type: ignore[arg-type]  # checked by choice()
            region=region,
            endpoint_url=endpoint,
            tps=tps,
            tps_burst=burst,
            max_in_flight=self.integer("MODERATION_MAX_IN_FLIGHT", 512, low=1, high=10_000),
            max_in_flight_bytes=self.integer(
                "MODERATION_MAX_IN_FLIGHT_BYTES", 256 * MIB, low=MIB, high=64 * 1024 * MIB
            ),
            max_attempts=self.integer("MODERATION_MAX_ATTEMPTS", 5, low=1, high=100),
            call_timeout_s=self.number("MODERATION_CALL_TIMEOUT_S", 30.0, low=0.1, high=600),
            default_min_confidence=self.number("MODERATION_MIN_CONFIDENCE", 50.0, low=0, high=100),
            local=local,
        )

    def local_model(self) -> LocalModelSettings:
        models = tuple(
            m.strip()
            for m in self.text("MODERATION_LOCAL_MODELS", "opennsfw").split(",")
            if m.strip()
        )
        for model in models:
            if model not in ("opennsfw", "nudenet"):
                raise ConfigError(
                    "MODERATION_LOCAL_MODELS", f"unknown model {model!r} (opennsfw, nudenet)"
                )
        paths: list[tuple[str, Path]] = []
        for item in (self.raw("MODERATION_LOCAL_MODEL_PATHS") or "").split(","):
            if not item.strip():
                continue
            name, sep, path = item.partition("=")
            if not sep or name.strip() not in models:
                raise ConfigError(
                    "MODERATION_LOCAL_MODEL_PATHS", f"expected model=path, got {item!r}"
                )
            paths.append((name.strip(), Path(path.strip())))
        endpoint = self.raw("MODERATION_LOCAL_S3_ENDPOINT_URL")
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                "MODERATION_LOCAL_S3_ENDPOINT_URL", f"expected an http(s) URL: {endpoint!r}"
            )
        return LocalModelSettings(
            models=models,
            workers=self.integer(
                "MODERATION_LOCAL_WORKERS", len(os.sched_getaffinity(0)), low=1, high=256
            ),
            threads_per_worker=self.integer(
                "MODERATION_LOCAL_THREADS_PER_WORKER", 1, low=1, high=64
            ),
            max_queue=self.integer("MODERATION_LOCAL_MAX_QUEUE", 32, low=0, high=10_000),
            model_paths=tuple(paths),
            read_s3=self.boolean("MODERATION_LOCAL_READ_S3", False),
            s3_endpoint_url=endpoint,
            # 80 x 80 (the smallest image) to 10,000 x 10,000 (the largest Rekognition takes).
            max_image_pixels=self.integer(
                "MODERATION_MAX_IMAGE_PIXELS", 40_000_000, low=6_400, high=100_000_000
            ),
        )
