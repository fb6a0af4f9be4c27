"""Settings from the environment: defaults, errors that name their variable, no secrets."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.logs import JsonFormatter
from service.settings import MIB, Settings

BASE = {"AWS_REGION": "eu-west-1"}


def load(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def config_error(**env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(**env)
    return info.value


def test_defaults_with_only_the_region_set() -> None:
    settings = Settings.from_env(BASE)

    kafka = settings.kafka
    assert kafka.bootstrap_servers is None  # the embedded broker
    assert kafka.group_id == "image-moderation"
    assert kafka.input_topic == "moderation.requests"
    assert kafka.approved_topic == "moderation.approved"
    assert kafka.rejected_topic == "moderation.rejected"
    assert kafka.review_topic == "moderation.review"
    assert kafka.dlq_topic == "moderation.dlq"
    assert kafka.enable_idempotence is False  # the embedded broker refuses InitProducerId v0
    assert kafka.security_protocol == "PLAINTEXT"
    assert kafka.sasl_mechanism is None
    assert kafka.sasl_username is None
    assert kafka.sasl_password is None
    assert kafka.session_timeout_ms == 10_000
    assert kafka.max_input_bytes == 8 * MIB

    backend = settings.backend
    assert backend.kind == "rekognition"
    assert backend.region == "eu-west-1"
    assert backend.endpoint_url is None
    assert backend.tps == 5.0
    assert backend.tps_burst == 1.0  # a tenth of the rate, at least one
    assert backend.max_in_flight == 512
    assert backend.max_in_flight_bytes == 256 * MIB
    assert backend.max_attempts == 5
    assert backend.call_timeout_s == 30.0
    assert backend.default_min_confidence == 50.0

    assert settings.fetch.timeout_s == 10.0
    assert settings.fetch.max_bytes == 50 * MIB
    assert settings.fetch.allowed_networks == ()

    assert settings.policy_file is None
    assert settings.reject_threshold == 80.0
    assert settings.review_threshold == 50.0
    assert settings.shutdown_grace_s == 25.0
    assert settings.log_level == "INFO"
    assert settings.log_format == "json"
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == 8080


def test_idempotence_defaults_on_with_an_external_cluster() -> None:
    settings = load(KAFKA_BOOTSTRAP_SERVERS="kafka-1:9092,kafka-2:9092")
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.kafka.enable_idempotence is True


def test_aws_default_region_is_a_fallback_for_aws_region() -> None:
    settings = Settings.from_env({"AWS_DEFAULT_REGION": "ap-south-1"})
    assert settings.backend.region == "ap-south-1"


def test_blank_values_count_as_unset() -> None:
    settings = load(MODERATION_TPS="  ", MODERATION_INPUT_TOPIC="", LOG_LEVEL=" ")
    assert settings.backend.tps == 5.0
    assert settings.kafka.input_topic == "moderation.requests"
    assert settings.log_level == "INFO"
    assert settings.log_format == "json"
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == 8080


def test_values_are_parsed_and_stripped() -> None:
    settings = load(
        MODERATION_TPS=" 12.5 ",
        MODERATION_TPS_BURST="30",
        MODERATION_MAX_IN_FLIGHT="8",
        MODERATION_MAX_IN_FLIGHT_BYTES=str(8 * 1024 * MIB),
        KAFKA_ENABLE_IDEMPOTENCE="yes",
        MODERATION_INPUT_TOPIC="in_topic-1.v2",
        MODERATION_FETCH_ALLOWED_NETWORKS="10.0.0.0/8, 192.168.1.7 ,fd00::/8,",
        REKOGNITION_ENDPOINT_URL="http://localhost:4566",
        LOG_LEVEL="DEBUG",
        LOG_FORMAT="text",
        MODERATION_HTTP_HOST="127.0.0.1",
        MODERATION_HTTP_PORT="0",
    )
    assert settings.backend.tps == 12.5
    assert settings.backend.tps_burst == 30.0
    assert settings.backend.max_in_flight == 8
    assert settings.backend.max_in_flight_bytes == 8 * 1024 * MIB  # above 2**31 is allowed
    assert settings.kafka.enable_idempotence is True
    assert settings.kafka.input_topic == "in_topic-1.v2"
    assert settings.backend.endpoint_url == "http://localhost:4566"
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "text"
    assert settings.http_host == "127.0.0.1"
    assert settings.http_port == 0
    assert settings.fetch.allowed_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("fd00::/8"),
    )


@pytest.mark.parametrize(("tps", "burst"), [("0.5", 1.0), ("5", 1.0), ("40", 4.0), ("200", 20.0)])
def test_burst_defaults_to_a_tenth_of_the_rate_but_at_least_one(tps: str, burst: float) -> None:
    assert load(MODERATION_TPS=tps).backend.tps_burst == burst


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    assert load(KAFKA_ENABLE_IDEMPOTENCE=text).kafka.enable_idempotence is expected


# (test id, environment, variable the error must name). Ids avoid the words "fetch" and "fake",
# which the quick unit run (-k "not fetch and not fake") filters on.
BAD_VARIABLES: list[tuple[str, dict[str, str], str]] = [
    ("tps-not-a-number", {"MODERATION_TPS": "abc"}, "MODERATION_TPS"),
    ("tps-negative", {"MODERATION_TPS": "-1"}, "MODERATION_TPS"),
    ("tps-zero", {"MODERATION_TPS": "0"}, "MODERATION_TPS"),
    ("tps-nan", {"MODERATION_TPS": "nan"}, "MODERATION_TPS"),
    ("tps-inf", {"MODERATION_TPS": "inf"}, "MODERATION_TPS"),
    ("burst-below-one", {"MODERATION_TPS_BURST": "0.5"}, "MODERATION_TPS_BURST"),
    ("in-flight-fraction", {"MODERATION_MAX_IN_FLIGHT": "1.5"}, "MODERATION_MAX_IN_FLIGHT"),
    ("in-flight-zero", {"MODERATION_MAX_IN_FLIGHT": "0"}, "MODERATION_MAX_IN_FLIGHT"),
    (
        "in-flight-bytes-small",
        {"MODERATION_MAX_IN_FLIGHT_BYTES": str(MIB - 1)},
        "MODERATION_MAX_IN_FLIGHT_BYTES",
    ),
    (
        "in-flight-bytes-text",
        {"MODERATION_MAX_IN_FLIGHT_BYTES": "lots"},
        "MODERATION_MAX_IN_FLIGHT_BYTES",
    ),
    ("attempts-high", {"MODERATION_MAX_ATTEMPTS": "101"}, "MODERATION_MAX_ATTEMPTS"),
    ("session-timeout-low", {"KAFKA_SESSION_TIMEOUT_MS": "999"}, "KAFKA_SESSION_TIMEOUT_MS"),
    ("input-bytes-low", {"MODERATION_MAX_INPUT_BYTES": "1023"}, "MODERATION_MAX_INPUT_BYTES"),
    (
        "download-max-bytes-high",
        {"MODERATION_FETCH_MAX_BYTES": str(1024 * MIB + 1)},
        "MODERATION_FETCH_MAX_BYTES",
    ),
    ("min-confidence-high", {"MODERATION_MIN_CONFIDENCE": "100.1"}, "MODERATION_MIN_CONFIDENCE"),
    (
        "reject-threshold-negative",
        {"MODERATION_REJECT_THRESHOLD": "-0.1"},
        "MODERATION_REJECT_THRESHOLD",
    ),
    ("idempotence-maybe", {"KAFKA_ENABLE_IDEMPOTENCE": "maybe"}, "KAFKA_ENABLE_IDEMPOTENCE"),
    ("input-topic-space", {"MODERATION_INPUT_TOPIC": "bad topic"}, "MODERATION_INPUT_TOPIC"),
    ("dlq-topic-slash", {"MODERATION_DLQ_TOPIC": "dlq/topic"}, "MODERATION_DLQ_TOPIC"),
    ("review-topic-too-long", {"MODERATION_REVIEW_TOPIC": "x" * 250}, "MODERATION_REVIEW_TOPIC"),
    (
        "duplicate-topics",
        {"MODERATION_INPUT_TOPIC": "same", "MODERATION_REJECTED_TOPIC": "same"},
        "MODERATION_REJECTED_TOPIC",
    ),
    (
        "dlq-topic-reuses-default",
        {"MODERATION_DLQ_TOPIC": "moderation.approved"},
        "MODERATION_DLQ_TOPIC",
    ),
    (
        "review-above-reject",
        {"MODERATION_REVIEW_THRESHOLD": "90", "MODERATION_REJECT_THRESHOLD": "80"},
        "MODERATION_REVIEW_THRESHOLD",
    ),
    ("sasl-ssl-no-mechanism", {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
    (
        "sasl-plaintext-no-mechanism",
        {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
        "KAFKA_SASL_MECHANISM",
    ),
    ("unknown-protocol", {"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ("unknown-mechanism", {"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
    (
        "networks-not-a-cidr",
        {"MODERATION_FETCH_ALLOWED_NETWORKS": "not-a-cidr"},
        "MODERATION_FETCH_ALLOWED_NETWORKS",
    ),
    (
        "networks-bad-prefix",
        {"MODERATION_FETCH_ALLOWED_NETWORKS": "10.0.0.0/8,10.0.0.0/33"},
        "MODERATION_FETCH_ALLOWED_NETWORKS",
    ),
    (
        "endpoint-no-scheme",
        {"REKOGNITION_ENDPOINT_URL": "localhost:4566"},
        "REKOGNITION_ENDPOINT_URL",
    ),
    ("unknown-backend", {"MODERATION_BACKEND": "vision-api"}, "MODERATION_BACKEND"),
    (
        "unknown-local-model",
        {"MODERATION_BACKEND": "local", "MODERATION_LOCAL_MODELS": "clip"},
        "MODERATION_LOCAL_MODELS",
    ),
    (
        "bad-model-path",
        {"MODERATION_BACKEND": "local", "MODERATION_LOCAL_MODEL_PATHS": "opennsfw"},
        "MODERATION_LOCAL_MODEL_PATHS",
    ),
    ("unknown-log-level", {"LOG_LEVEL": "VERBOSE"}, "LOG_LEVEL"),
    ("unknown-log-format", {"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ("http-port-too-high", {"MODERATION_HTTP_PORT": "65536"}, "MODERATION_HTTP_PORT"),
    ("http-port-negative", {"MODERATION_HTTP_PORT": "-1"}, "MODERATION_HTTP_PORT"),
    (
        "policy-file-missing",
        {"MODERATION_POLICY_FILE": "/nonexistent/policy.yaml"},
        "MODERATION_POLICY_FILE",
    ),
]


@pytest.mark.parametrize(
    ("env", "variable"),
    [pytest.param(env, variable, id=case_id) for case_id, env, variable in BAD_VARIABLES],
)
def test_each_bad_variable_is_named(env: dict[str, str], variable: str) -> None:
    error = config_error(**env)
    assert error.variable == variable
    assert str(error).startswith(f"{variable}: ")
    assert error.problem in str(error)


def test_missing_region_is_named_when_rekognition_is_asked_for() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MODERATION_BACKEND": "rekognition"})
    assert info.value.variable == "AWS_REGION"


def test_without_any_aws_configuration_the_local_model_is_the_default() -> None:
    settings = Settings.from_env({})
    assert settings.backend.kind == "local"
    assert settings.backend.local.models == ("opennsfw", "safety")
    assert settings.backend.tps == 50.0 * settings.backend.local.workers
    assert (
        Settings.from_env(
            {"REKOGNITION_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_REGION": "x"}
        ).backend.kind
        == "rekognition"
    )


def test_duplicate_topic_error_names_both_variables() -> None:
    error = config_error(MODERATION_APPROVED_TOPIC="out", MODERATION_REVIEW_TOPIC="out")
    assert error.variable == "MODERATION_REVIEW_TOPIC"
    assert "MODERATION_APPROVED_TOPIC" in error.problem
    assert "'out'" in error.problem


def test_config_error_quotes_the_bad_value() -> None:
    assert "'abc'" in config_error(MODERATION_TPS="abc").problem


def test_policy_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    assert config_error(MODERATION_POLICY_FILE=str(tmp_path)).variable == "MODERATION_POLICY_FILE"


def test_existing_policy_file_is_kept(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("default: {reject: 90}\n")
    assert load(MODERATION_POLICY_FILE=str(policy)).policy_file == policy


def test_equal_review_and_reject_thresholds_are_allowed() -> None:
    settings = load(MODERATION_REVIEW_THRESHOLD="70", MODERATION_REJECT_THRESHOLD="70")
    assert settings.review_threshold == settings.reject_threshold == 70.0


def test_sasl_settings_are_read() -> None:
    settings = load(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="svc-moderation",
        KAFKA_SASL_PASSWORD="hunter2-s3cr3t",
    )
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka.sasl_username == "svc-moderation"
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2-s3cr3t"


def test_sasl_password_never_appears_in_repr_dumps_or_logs() -> None:
    password = "hunter2-s3cr3t"
    settings = load(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="svc-moderation",
        KAFKA_SASL_PASSWORD=password,
    )
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "settings %s", (settings,), None)
    logged = (JsonFormatter().format(record), logging.Formatter().format(record))
    for text in (repr(settings), str(settings), repr(settings.kafka), f"{settings}", *logged):
        assert "svc-moderation" in text  # the repr is real, not blanked out entirely
        assert password not in text
        assert "sasl_password" not in text
    assert password not in settings.model_dump_json()


def test_only_the_given_mapping_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI passes os.environ; a test's own mapping must not pick up the process's."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-the-process:9092")
    monkeypatch.setenv("MODERATION_TPS", "not a number")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    settings = Settings.from_env(BASE)
    assert settings.log_level == "INFO"
    assert settings.kafka.bootstrap_servers is None
    assert settings.backend.tps == 5.0


def test_a_range_error_names_both_ends() -> None:
    assert config_error(MODERATION_TPS="-1").problem == "must be between 0.1 and 100000, got '-1'"


def test_every_bad_variable_is_named_at_once() -> None:
    error = config_error(MODERATION_TPS="x", LOG_LEVEL="LOUD", MODERATION_SINK_MAX_EARLY="0")
    assert error.variable == "MODERATION_TPS"
    assert "also invalid: LOG_LEVEL, MODERATION_SINK_MAX_EARLY" in error.problem


def test_min_samples_must_fit_the_window() -> None:
    error = config_error(MODERATION_DLQ_GUARD_WINDOW="50", MODERATION_DLQ_GUARD_MIN_SAMPLES="60")
    assert error.variable == "MODERATION_DLQ_GUARD_MIN_SAMPLES"
    assert load(MODERATION_DLQ_GUARD_WINDOW="50").safety.guard_min_samples == 50


def test_local_model_variables_count_only_for_the_local_backend() -> None:
    stray = {"MODERATION_LOCAL_MODELS": "clip", "MODERATION_LOCAL_WORKERS": "0"}
    assert load(**stray).backend.kind == "rekognition"  # never stopped by them
    env = {"MODERATION_BACKEND": "local", "MODERATION_LOCAL_WORKERS": "3"}
    local = load(**env, MODERATION_LOCAL_MODEL_PATHS="opennsfw=/m/a.onnx").backend
    assert local.local.workers == 3
    assert local.local.model_paths == (("opennsfw", Path("/m/a.onnx")),)
    assert local.tps == 150.0  # 50 per worker


def test_activation_conditions_come_inline_or_from_a_file(tmp_path: Path) -> None:
    conditions = tmp_path / "conditions.json"
    conditions.write_text('{"Conditions": []}')
    review = load(MODERATION_ACTIVATION_CONDITIONS_FILE=str(conditions)).review
    assert review.activation_conditions == '{"Conditions": []}'
    assert review.activation_source == f"MODERATION_ACTIVATION_CONDITIONS_FILE ({conditions})"
    inline = load(MODERATION_ACTIVATION_CONDITIONS="{}").review
    assert (inline.activation_conditions, inline.activation_source) == (
        "{}",
        "MODERATION_ACTIVATION_CONDITIONS",
    )
    both = {"MODERATION_ACTIVATION_CONDITIONS_FILE": str(conditions)}
    error = config_error(**both, MODERATION_ACTIVATION_CONDITIONS="{}")
    assert error.variable == "MODERATION_ACTIVATION_CONDITIONS_FILE"
    missing = config_error(MODERATION_ACTIVATION_CONDITIONS_FILE=str(tmp_path / "none.json"))
    assert missing.variable == "MODERATION_ACTIVATION_CONDITIONS_FILE"


@pytest.mark.parametrize("topic", ["t\u00f3pico", "orders\u0663", "\uff4d\uff4f\uff44", ".", ".."])
def test_topic_names_kafka_refuses_are_refused(topic: str) -> None:
    assert config_error(MODERATION_INPUT_TOPIC=topic).variable == "MODERATION_INPUT_TOPIC"


def test_group_instance_id_is_optional_and_validated() -> None:
    assert Settings.from_env({}).kafka.group_instance_id is None
    env = {"KAFKA_GROUP_INSTANCE_ID": "moderation-pipeline-7c9f-x2"}
    assert Settings.from_env(env).kafka.group_instance_id == "moderation-pipeline-7c9f-x2"
    for bad in ("has space", "x" * 250, "slash/ed"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"KAFKA_GROUP_INSTANCE_ID": bad})
        assert caught.value.variable == "KAFKA_GROUP_INSTANCE_ID"
