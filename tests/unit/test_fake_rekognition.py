"""The fake Rekognition, driven end to end by the real SDK (aioboto3) over HTTP.

These pin the wire contract the service's Rekognition backend relies on: response shapes from
botocore's service model, error codes arriving as ``ClientError``, quota throttling and the
control API used by out-of-process tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests import image_files
from tests.fakes.rekognition import FakeRekognition, FakeStats, Received
from tests.images import solid_png, zlib_bomb_png

PNG = solid_png(96, 96)  # real images within Rekognition's limits: the fake checks them
JPEG = image_files.jpeg(96, 96)
BUCKET = "images-bucket"  # botocore checks S3Bucket's min length (3) before sending
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def fake_rekognition() -> AsyncIterator[FakeRekognition]:
    """Without an S3 endpoint: S3 objects exist as scripted (``set_object``) only."""
    async with FakeRekognition() as fake:
        yield fake


@pytest.fixture
async def s3_fake(moto_s3: str) -> AsyncIterator[FakeRekognition]:
    """Reading S3Object images from moto, as the service's tests use it."""
    async with FakeRekognition(s3_endpoint_url=moto_s3) as fake:
        yield fake


def lbl(name: str, confidence: float, parent: str = "", level: int = 1) -> dict[str, Any]:
    return {"Name": name, "ParentName": parent, "Confidence": confidence, "TaxonomyLevel": level}


def with_marker(*labels: dict[str, Any], base: bytes = PNG) -> bytes:
    return base + b"FAKE-LABELS:" + json.dumps(list(labels)).encode()


@asynccontextmanager
async def rekognition(target: FakeRekognition | str, pool: int = 10) -> AsyncIterator[Any]:
    """A real SDK client aimed at the fake, with SDK retries off so every answer is visible."""
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"}, max_pool_connections=pool
    )
    async with aioboto3.Session().client(
        "rekognition",
        endpoint_url=target if isinstance(target, str) else target.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=config,
    ) as client:
        yield client


async def error_code(call: Any) -> str:
    with pytest.raises(ClientError) as info:
        await call
    return str(info.value.response["Error"]["Code"])


def s3(name: str, bucket: str = BUCKET) -> dict[str, Any]:
    return {"S3Object": {"Bucket": bucket, "Name": name, "Version": "v1"}}


async def test_registered_s3_object_returns_its_labels(fake_rekognition: FakeRekognition) -> None:
    labels = [lbl("Explicit", 97.5), lbl("Explicit Nudity", 96.0, "Explicit", 2)]
    fake_rekognition.set_object(BUCKET, "a/b.png", labels)
    async with rekognition(fake_rekognition) as client:
        response = await client.detect_moderation_labels(Image=s3("a/b.png"))
    assert response["ModerationLabels"] == labels
    assert response["ModerationModelVersion"] == "7.0"
    assert "HumanLoopActivationOutput" not in response
    assert fake_rekognition.stats.calls == 1
    assert fake_rekognition.stats.ok == 1


async def test_missing_object_is_invalid_s3_object(fake_rekognition: FakeRekognition) -> None:
    async with rekognition(fake_rekognition) as client:
        code = await error_code(client.detect_moderation_labels(Image=s3("nope.png")))
    assert code == "InvalidS3ObjectException"
    assert fake_rekognition.stats.errors_by_code == {"InvalidS3ObjectException": 1}


async def test_registered_object_error(fake_rekognition: FakeRekognition) -> None:
    fake_rekognition.set_object(BUCKET, "denied.png", error="AccessDeniedException")
    async with rekognition(fake_rekognition) as client:
        code = await error_code(client.detect_moderation_labels(Image=s3("denied.png")))
    assert code == "AccessDeniedException"


async def test_non_image_bytes_are_invalid_format(fake_rekognition: FakeRekognition) -> None:
    async with rekognition(fake_rekognition) as client:
        code = await error_code(client.detect_moderation_labels(Image={"Bytes": b"GIF89a..."}))
    assert code == "InvalidImageFormatException"


# aiohttp (under aiobotocore) warns about any raw-bytes body over 1 MiB; the suite makes warnings
# errors, so a >1 MiB Image.Bytes call needs this in any test that sends one.
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_oversized_bytes_are_too_large(fake_rekognition: FakeRekognition) -> None:
    big = PNG + b"\x00" * (5 * 1024 * 1024)  # botocore does not enforce the blob max itself
    async with rekognition(fake_rekognition) as client:
        code = await error_code(client.detect_moderation_labels(Image={"Bytes": big}))
    assert code == "ImageTooLargeException"


async def test_embedded_marker_scripts_labels(fake_rekognition: FakeRekognition) -> None:
    labels = [lbl("Alcohol", 88.0), lbl("Drinking", 70.0, "Alcohol", 2)]
    async with rekognition(fake_rekognition) as client:
        png = await client.detect_moderation_labels(Image={"Bytes": with_marker(*labels)})
        jpeg = await client.detect_moderation_labels(
            Image={"Bytes": with_marker(*labels, base=JPEG)}
        )
        plain = await client.detect_moderation_labels(Image={"Bytes": PNG})
    assert png["ModerationLabels"] == labels
    assert jpeg["ModerationLabels"] == labels
    assert plain["ModerationLabels"] == []


async def test_set_image_takes_precedence_over_marker(fake_rekognition: FakeRekognition) -> None:
    data = with_marker(lbl("Alcohol", 88.0))
    fake_rekognition.set_image(data, [lbl("Violence", 91.0)])
    other = with_marker(lbl("Alcohol", 88.0), base=PNG + b"salt")
    fake_rekognition.set_image(other, error="InvalidImageFormatException")
    async with rekognition(fake_rekognition) as client:
        response = await client.detect_moderation_labels(Image={"Bytes": data})
        code = await error_code(client.detect_moderation_labels(Image={"Bytes": other}))
    assert [x["Name"] for x in response["ModerationLabels"]] == ["Violence"]
    assert code == "InvalidImageFormatException"


async def test_min_confidence_filters(fake_rekognition: FakeRekognition) -> None:
    fake_rekognition.set_object(
        BUCKET, "mixed.png", [lbl("Explicit", 97.0), lbl("Swimwear", 65.0), lbl("Alcohol", 20.0)]
    )
    async with rekognition(fake_rekognition) as client:
        default = await client.detect_moderation_labels(Image=s3("mixed.png"))
        strict = await client.detect_moderation_labels(Image=s3("mixed.png"), MinConfidence=90)
        loose = await client.detect_moderation_labels(Image=s3("mixed.png"), MinConfidence=0)
    assert [x["Name"] for x in default["ModerationLabels"]] == ["Explicit", "Swimwear"]
    assert [x["Name"] for x in strict["ModerationLabels"]] == ["Explicit"]
    assert len(loose["ModerationLabels"]) == 3


async def test_quota_throttles_concurrent_burst() -> None:
    async with FakeRekognition(tps_quota=5) as fake, rekognition(fake, pool=20) as client:
        results = await asyncio.gather(
            *(client.detect_moderation_labels(Image={"Bytes": PNG}) for _ in range(20)),
            return_exceptions=True,
        )
    codes = [r.response["Error"]["Code"] for r in results if isinstance(r, ClientError)]
    assert all(isinstance(r, dict | ClientError) for r in results), results
    assert codes
    assert set(codes) == {"ThrottlingException"}
    assert any(isinstance(r, dict) for r in results)
    assert fake.stats.throttled == len(codes) > 0
    assert fake.stats.ok + fake.stats.throttled == fake.stats.calls == 20
    assert len(fake.stats.accepted_at) == fake.stats.ok


async def test_quota_refills_and_can_be_lifted(fake_rekognition: FakeRekognition) -> None:
    fake_rekognition.set_quota(2, burst=1)  # slow refill: the second call surely finds it empty
    async with rekognition(fake_rekognition) as client:
        await client.detect_moderation_labels(Image={"Bytes": PNG})
        code = await error_code(client.detect_moderation_labels(Image={"Bytes": PNG}))
        assert code == "ThrottlingException"
        await asyncio.sleep(0.6)  # more than one refill period at 2/s
        await client.detect_moderation_labels(Image={"Bytes": PNG})
        fake_rekognition.set_quota(None)
        await asyncio.gather(
            *(client.detect_moderation_labels(Image={"Bytes": PNG}) for _ in range(10))
        )
    assert fake_rekognition.stats.throttled == 1


async def test_injected_internal_server_error(fake_rekognition: FakeRekognition) -> None:
    fake_rekognition.inject_errors("InternalServerError", count=2)
    async with rekognition(fake_rekognition) as client:
        with pytest.raises(ClientError) as info:
            await client.detect_moderation_labels(Image={"Bytes": PNG})
        assert info.value.response["Error"]["Code"] == "InternalServerError"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert await error_code(client.detect_moderation_labels(Image={"Bytes": PNG})) == (
            "InternalServerError"
        )
        await client.detect_moderation_labels(Image={"Bytes": PNG})  # count exhausted
    assert fake_rekognition.stats.errors_by_code == {"InternalServerError": 2}


async def test_injected_error_rate_is_seeded_fraction() -> None:
    async with FakeRekognition(seed=7) as fake, rekognition(fake) as client:
        fake.inject_errors("ProvisionedThroughputExceededException", rate=0.5)
        results = await asyncio.gather(
            *(client.detect_moderation_labels(Image={"Bytes": PNG}) for _ in range(60)),
            return_exceptions=True,
        )
        failed = sum(isinstance(r, ClientError) for r in results)
        assert 10 < failed < 50
        fake.inject_errors(None)
        await client.detect_moderation_labels(Image={"Bytes": PNG})


async def test_human_loop_activation(fake_rekognition: FakeRekognition) -> None:
    fake_rekognition.set_object(BUCKET, "borderline.png", [lbl("Swimwear", 65.0)])
    fake_rekognition.set_object(BUCKET, "clear.png", [lbl("Explicit", 99.0)])
    flow = "arn:aws:sagemaker:us-east-1:000000000000:flow-definition/moderation"
    async with rekognition(fake_rekognition) as client:
        low = await client.detect_moderation_labels(
            Image=s3("borderline.png"),
            HumanLoopConfig={"HumanLoopName": "loop-1", "FlowDefinitionArn": flow},
        )
        high = await client.detect_moderation_labels(
            Image=s3("clear.png"),
            HumanLoopConfig={"HumanLoopName": "loop-2", "FlowDefinitionArn": flow},
        )
        always = await client.detect_moderation_labels(
            Image=s3("clear.png"),
            HumanLoopConfig={"HumanLoopName": "loop-3", "FlowDefinitionArn": flow + "-always"},
        )
        fake_rekognition.inject_errors("HumanLoopQuotaExceededException")
        plain = await client.detect_moderation_labels(Image=s3("clear.png"))  # no loop asked
        code = await error_code(
            client.detect_moderation_labels(
                Image=s3("borderline.png"),
                HumanLoopConfig={"HumanLoopName": "loop-4", "FlowDefinitionArn": flow},
            )
        )
    activation = low["HumanLoopActivationOutput"]
    assert activation["HumanLoopArn"] == (
        "arn:aws:sagemaker:us-east-1:000000000000:human-loop/loop-1"
    )
    assert activation["HumanLoopActivationReasons"] == ["ConditionsEvaluation"]
    assert isinstance(
        json.loads(activation["HumanLoopActivationConditionsEvaluationResults"]), dict
    )
    assert "HumanLoopActivationOutput" not in high
    assert always["HumanLoopActivationOutput"]["HumanLoopArn"].endswith("/loop-3")
    assert plain["ModerationLabels"][0]["Name"] == "Explicit"
    assert code == "HumanLoopQuotaExceededException"


async def test_unknown_operation(fake_rekognition: FakeRekognition) -> None:
    async with rekognition(fake_rekognition) as client:
        code = await error_code(client.detect_labels(Image={"Bytes": PNG}))
    assert code == "UnknownOperationException"


async def test_many_concurrent_calls_overlap() -> None:
    async with (
        FakeRekognition(latency_s=0.3, jitter_s=0.05) as fake,
        rekognition(fake, pool=200) as client,
    ):
        started = time.monotonic()
        await asyncio.gather(
            *(client.detect_moderation_labels(Image={"Bytes": PNG}) for _ in range(200))
        )
        elapsed = time.monotonic() - started
    assert fake.stats.ok == 200
    assert fake.stats.max_concurrency >= 50
    assert fake.stats.current_concurrency == 0
    assert elapsed < 30  # serial would take 60 s; generous for slow CI


async def test_control_api(fake_rekognition: FakeRekognition) -> None:
    base = fake_rekognition.endpoint_url
    async with aiohttp.ClientSession() as http:

        async def post(path: str, body: dict[str, Any]) -> None:
            async with http.post(base + path, json=body) as response:
                assert response.status == 200, await response.text()

        await post("/_fake/objects", {"bucket": BUCKET, "name": "k.png", "labels": [lbl("X", 90)]})
        await post(
            "/_fake/objects", {"bucket": BUCKET, "name": "e.png", "error": "AccessDeniedException"}
        )
        await post("/_fake/latency", {"latency_s": 0.01, "jitter_s": 0.005})
        async with rekognition(fake_rekognition) as client:
            response = await client.detect_moderation_labels(Image=s3("k.png"))
            assert [x["Name"] for x in response["ModerationLabels"]] == ["X"]
            denied = await error_code(client.detect_moderation_labels(Image=s3("e.png")))
            assert denied == "AccessDeniedException"

            await post("/_fake/errors", {"code": "InternalServerError", "count": 1})
            assert await error_code(client.detect_moderation_labels(Image=s3("k.png"))) == (
                "InternalServerError"
            )
            await post("/_fake/quota", {"tps": 1, "burst": 1})
            await client.detect_moderation_labels(Image=s3("k.png"))
            throttled = await error_code(client.detect_moderation_labels(Image=s3("k.png")))
            assert throttled == "ThrottlingException"

            async with http.get(base + "/_fake/stats") as got:
                stats = await got.json()
            assert stats["calls"] == 5
            assert stats["ok"] == 2
            assert stats["throttled"] == 1
            assert stats["errors_by_code"] == {
                "AccessDeniedException": 1,
                "InternalServerError": 1,
                "ThrottlingException": 1,
            }
            assert "accepted_at" not in stats
            assert stats["accepted"] == 4
            assert stats["current_concurrency"] == 0

            await post("/_fake/reset", {})
            assert await error_code(client.detect_moderation_labels(Image=s3("k.png"))) == (
                "InvalidS3ObjectException"
            )
            await asyncio.gather(
                *(client.detect_moderation_labels(Image={"Bytes": PNG}) for _ in range(5))
            )
        async with http.get(base + "/_fake/stats") as got:
            stats = await got.json()
        assert stats["calls"] == 6
        assert stats["throttled"] == 0

        async with http.post(base + "/_fake/quota", json={"tps": "lots"}) as bad:
            assert bad.status == 400
        async with http.post(base + "/_fake/objects", json={"bucket": BUCKET}) as bad:
            assert bad.status == 400


async def test_raw_wire_format(fake_rekognition: FakeRekognition) -> None:
    headers = {
        "X-Amz-Target": "RekognitionService.Nope",
        "Content-Type": "application/x-amz-json-1.1",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(fake_rekognition.endpoint_url + "/", data=b"{}", headers=headers) as response,
    ):
        body = json.loads(await response.read())
        assert response.status == 400
        assert response.headers["x-amzn-ErrorType"] == "UnknownOperationException"
        assert body["__type"] == "UnknownOperationException"
        assert body["Message"]


def test_stats_sustained_rate() -> None:
    stats = FakeStats(accepted_at=[10.0, 10.5, 11.0, 11.5, 12.0])
    assert stats.sustained_rate() == pytest.approx(2.0)
    assert FakeStats().sustained_rate() == 0.0
    now = time.monotonic()
    recent = FakeStats(accepted_at=[now - 5.0, now - 0.5, now - 0.25])
    assert recent.sustained_rate(1.0) == pytest.approx(2.0)


def test_bad_labels_rejected_early() -> None:
    fake = FakeRekognition()
    with pytest.raises(ValueError, match="Confidence"):
        fake.set_object(BUCKET, "k", [{"Name": "X"}])
    with pytest.raises(ValueError, match="Name"):
        fake.set_image(PNG, [{"Confidence": 90}])


async def test_standalone_process() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.rekognition",
        "--port",
        "0",
        "--tps",
        "50",
        "--latency",
        "0.01",
        "--jitter",
        "0.005",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        url = line.decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            body = {"bucket": BUCKET, "name": "k.png", "labels": [lbl("Explicit", 97.0)]}
            async with http.post(url + "/_fake/objects", json=body) as response:
                assert response.status == 200
        async with rekognition(url) as client:
            result = await client.detect_moderation_labels(Image=s3("k.png"))
        assert result["ModerationLabels"][0]["Name"] == "Explicit"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_control_api_images(fake_rekognition: FakeRekognition) -> None:
    data = PNG + b"control"
    body = {"data": base64.b64encode(data).decode(), "labels": [lbl("Violence", 92.0)]}
    async with aiohttp.ClientSession() as http:
        async with http.post(fake_rekognition.endpoint_url + "/_fake/images", json=body) as got:
            assert got.status == 200
        async with http.post(
            fake_rekognition.endpoint_url + "/_fake/images", json={"data": "not base64!"}
        ) as bad:
            assert bad.status == 400
    async with rekognition(fake_rekognition) as client:
        response = await client.detect_moderation_labels(Image={"Bytes": data})
    assert [x["Name"] for x in response["ModerationLabels"]] == ["Violence"]


# -- Rekognition's input rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (image_files.tiny("PNG", 40), "InvalidImageFormatException"),  # under 80 px a side
        (image_files.wide(12_000, 300), "InvalidImageFormatException"),  # over 10,000
        (image_files.webp_lossy(), "InvalidImageFormatException"),  # neither JPEG nor PNG
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "InvalidImageFormatException"),  # PNG magic only
    ],
)
async def test_bytes_rekognition_cannot_read_are_refused_as_aws_does(
    fake_rekognition: FakeRekognition, data: bytes, code: str
) -> None:
    async with rekognition(fake_rekognition) as client:
        assert await error_code(client.detect_moderation_labels(Image={"Bytes": data})) == code


async def test_the_largest_image_rekognition_takes_is_answered_not_a_500(
    fake_rekognition: FakeRekognition,
) -> None:
    # 10,000 x 10,000 (~400 KB): over Pillow's 89 MP bomb warning, which pytest makes an error.
    bomb = zlib_bomb_png()
    async with rekognition(fake_rekognition) as client:
        got = await client.detect_moderation_labels(Image={"Bytes": bomb})
    assert got["ModerationLabels"] == []
    assert fake_rekognition.stats.received == [Received("bytes", "png", len(bomb), 10_000, 10_000)]


async def test_what_each_call_carried_is_recorded(fake_rekognition: FakeRekognition) -> None:
    async with rekognition(fake_rekognition) as client:
        await client.detect_moderation_labels(Image={"Bytes": JPEG})
        await error_code(client.detect_moderation_labels(Image={"Bytes": image_files.tiny()}))
    assert fake_rekognition.stats.received == [
        Received("bytes", "jpeg", len(JPEG), 96, 96),
        Received("bytes", "png", len(image_files.tiny()), 40, 40),
    ]


async def test_s3_objects_are_read_from_s3_under_the_same_rules(s3_fake: FakeRekognition) -> None:
    await s3_fake.put_object(BUCKET, "ok.jpg", labels=[lbl("Explicit", 97.0)])
    await s3_fake.put_object(BUCKET, "marked.png", with_marker(lbl("Alcohol", 88.0)))
    await s3_fake.put_object(BUCKET, "photo.webp", image_files.webp_lossy())
    await s3_fake.put_object(BUCKET, "wide.jpg", image_files.wide(12_000, 300))
    big = PNG + bytes(15 * 1000 * 1000 + 1 - len(PNG))
    await s3_fake.put_object(BUCKET, "big.png", big)
    s3_fake.set_object(BUCKET, "scripted-only.jpg", [lbl("Explicit", 97.0)])
    async with rekognition(s3_fake) as client:

        async def names(key: str) -> list[str]:
            image = {"S3Object": {"Bucket": BUCKET, "Name": key}}
            response = await client.detect_moderation_labels(Image=image)
            return [x["Name"] for x in response["ModerationLabels"]]

        async def code(key: str) -> str:
            return await error_code(
                client.detect_moderation_labels(Image={"S3Object": {"Bucket": BUCKET, "Name": key}})
            )

        assert await names("ok.jpg") == ["Explicit"]
        assert await names("marked.png") == ["Alcohol"]
        assert await code("photo.webp") == "InvalidImageFormatException"
        assert await code("wide.jpg") == "InvalidImageFormatException"
        assert await code("big.png") == "ImageTooLargeException"
        assert await code("scripted-only.jpg") == "InvalidS3ObjectException"  # not in S3
    received = {(r.key, r.format, r.width) for r in s3_fake.stats.received}
    assert ("ok.jpg", "jpeg", 96) in received
    assert ("photo.webp", None, None) in received


async def test_labels_can_be_scripted_by_colour(fake_rekognition: FakeRekognition) -> None:
    red, blue = image_files.frame_colour(0), image_files.frame_colour(2)
    fake_rekognition.set_colour(red, [lbl("Explicit", 97.0)])
    async with rekognition(fake_rekognition) as client:
        hit = await client.detect_moderation_labels(
            Image={"Bytes": image_files.jpeg(120, 100, colour=red)}
        )
        miss = await client.detect_moderation_labels(
            Image={"Bytes": image_files.jpeg(120, 100, colour=blue)}
        )
    assert [x["Name"] for x in hit["ModerationLabels"]] == ["Explicit"]
    assert miss["ModerationLabels"] == []
