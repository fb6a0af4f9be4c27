"""Connection options shared by every Kafka client the service makes (consumer, producer, admin,
the raw reader): one place for bootstrap servers, TLS and SASL."""

from __future__ import annotations

from aiokafka.helpers import create_ssl_context

from service.settings import KafkaSettings


def kafka_client_options(kafka: KafkaSettings, bootstrap: str) -> dict[str, object]:
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism is not None:
        options |= {
            "sasl_mechanism": kafka.sasl_mechanism,
            "sasl_plain_username": kafka.sasl_username,
            "sasl_plain_password": (
                kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
            ),
        }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context()
    return options
