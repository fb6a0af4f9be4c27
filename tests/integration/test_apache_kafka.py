"""The core scenario against Apache Kafka (KRaft) in Docker, with the idempotent producer on.

Runs where a Docker engine answers; elsewhere it is skipped with the reason. The embedded broker
cannot stand in here: it refuses idempotent producers.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.fakes.rekognition import FakeRekognition
from tests.integration.test_pipeline import check_every_kind_of_input
from tests.kafka_helpers import Topics


def docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.docker,
    pytest.mark.kafka,
    pytest.mark.skipif(not docker_engine_available(), reason="no Docker engine on this machine"),
]


@pytest.fixture(scope="module")
def apache_kafka() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as container:
        yield container.get_bootstrap_server()


async def test_every_kind_of_input_on_apache_kafka_with_idempotence(
    apache_kafka: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    await check_every_kind_of_input(
        apache_kafka, topics, fake_rekognition, KAFKA_ENABLE_IDEMPOTENCE="true"
    )
