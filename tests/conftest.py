"""Shared fixtures: a real Kafka-protocol broker over TCP, unique topics, the fake Rekognition.

The broker is, in order of preference: ``KAFKA_BOOTSTRAP_SERVERS`` (any existing cluster), Apache
Kafka in Docker when ``MODERATION_TEST_BROKER=docker`` (testcontainers), else the embedded Tansu.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from service.kafka.embedded import EmbeddedBroker, free_port
from tests.fakes.rekognition import FakeRekognition
from tests.kafka_helpers import Topics
from tests.noida import noida_binary, noida_broker

# No per-example deadline: that is a timing assertion, and a shared CI machine makes it flaky.
# Speed is measured by the benchmarks under bench/.
hypothesis_settings.register_profile("service", deadline=None)
hypothesis_settings.load_profile("service")


@pytest.fixture(scope="session")
async def kafka_bootstrap() -> AsyncIterator[str]:
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    if os.environ.get("MODERATION_TEST_BROKER") == "docker":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = EmbeddedBroker()
    await broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        await broker.stop()


@pytest.fixture(scope="session")
async def noida_bootstrap() -> AsyncIterator[str]:
    """noida-db (transactions, fencing, read_committed): where exactly-once is tested without
    Docker. Tests using it carry the ``noida`` marker."""
    if noida_binary() is None:
        pytest.skip("noida-db is not installed (pip install '.[dev]')")
    async with noida_broker() as bootstrap:
        yield bootstrap


@pytest.fixture
def topics() -> Topics:
    return Topics.unique(uuid.uuid4().hex[:10])


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """A real S3-protocol server (moto) on loopback, for output.json files and image objects."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
async def fake_rekognition(moto_s3: str) -> AsyncIterator[FakeRekognition]:
    """The fake Rekognition, reading S3Object images from moto (``put_object`` stores them);
    point the service's S3 reads at the same endpoint (``fake.s3_endpoint_url``)."""
    fake = FakeRekognition(s3_endpoint_url=moto_s3)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


# The SDK needs credentials to sign requests, even to the local fake; never real ones here.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
