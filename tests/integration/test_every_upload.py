"""Issue 14's uploads, end to end: every format, size and animation people send, by inline bytes,
URL and S3, through the real pipeline (a real broker over TCP, the real SDK) against the fake
Rekognition, which applies Rekognition's input rules and reads S3 objects from moto.

Each image is a solid colour (an animation: one colour per frame), so the fake's answer can be
scripted by colour (``FakeRekognition.set_colour``) whether the service passed the upload on
untouched or converted it: every upload must get a verdict, the right one.
"""

from __future__ import annotations

import base64
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import pytest

from service.settings import Settings
from tests import image_files
from tests.fakes.rekognition import MAX_IMAGE_BYTES, FakeRekognition
from tests.images import BORDERLINE, EXPLICIT, png_chunk
from tests.integration.test_pipeline import image_server, make_settings, outcomes, running
from tests.kafka_helpers import Topics, collect, create_topics, produce, request
from tests.processes import local_settings

pytestmark = pytest.mark.kafka

BUCKET = "uploads"
MB = 1000 * 1000
REJECT = image_files.frame_colour(5)  # magenta: the fake answers Explicit (97 %)
REVIEW = image_files.frame_colour(8)  # orange: Swimwear or Underwear (65 %)
GIF_FRAMES = 6  # frame 5 is magenta: the animation's last frame decides
Via = Literal["bytes", "url", "s3"]


@dataclass(frozen=True)
class Upload:
    via: Via
    data: bytes
    verdict: str
    format: str
    converted: bool
    frames: int = 1  # analyzed
    frame_count: int = 1


def padded_png(size: int, colour: tuple[int, int, int]) -> bytes:
    """A solid 400 x 300 PNG grown to ``size`` bytes by a private ancillary chunk of noise (an
    upload's metadata): decoders skip it, Rekognition counts it."""
    raw = zlib.compress((b"\x00" + bytes(colour) * 400) * 300)
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 400, 300, 8, 2, 0, 0, 0))
    head = b"\x89PNG\r\n\x1a\n" + ihdr
    tail = png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")
    filler = size - len(head) - len(tail) - 12
    return head + png_chunk(b"prVt", _noise(filler)) + tail


def padded_jpeg(width: int, height: int, size: int, colour: tuple[int, int, int]) -> bytes:
    """A solid ``width`` x ``height`` JPEG grown to about ``size`` bytes by APP15 segments of
    noise (a camera's maker notes): the pixels are real, the bytes too."""
    jpeg = image_files.jpeg(width, height, colour, quality=80)
    segment_payload = 65533
    count = max(0, (size - len(jpeg)) // (segment_payload + 4))
    noise = _noise(segment_payload)
    segment = b"\xff\xef" + struct.pack(">H", segment_payload + 2) + noise
    return jpeg[:2] + segment * count + jpeg[2:]


def _noise(size: int) -> bytes:
    """Incompressible bytes (a camera's or an editor's metadata is not all zeros)."""
    return os.urandom(size)


def uploads() -> dict[str, Upload]:
    """The issue's 21 uploads and what each must end as."""
    f = image_files
    return {
        # Formats Rekognition does not read, inline: converted to JPEG.
        "webp": Upload("bytes", f.webp_lossy(), "approved", "webp", True),
        "webp-animated": Upload("bytes", f.webp_animated(frames=4), "approved", "webp", True, 4, 4),
        "gif-animated": Upload(
            "bytes", f.gif_animated(frames=GIF_FRAMES), "rejected", "gif", True, 5, GIF_FRAMES
        ),
        "heic": Upload("bytes", f.heic(colour=REVIEW), "review", "heif", True),
        "avif": Upload("bytes", f.avif(colour=REJECT), "rejected", "avif", True),
        "bmp": Upload("bytes", f.bmp(), "approved", "bmp", True),
        "tiff": Upload("bytes", f.tiff(colour=REJECT), "rejected", "tiff", True),
        # JPEG and PNG Rekognition cannot take as they are.
        "png-40x40": Upload("bytes", f.tiny("PNG", 40), "approved", "png", True),
        "png-over-5-mib": Upload(
            "bytes", padded_png(MAX_IMAGE_BYTES + 1000, REVIEW), "review", "png", True
        ),
        # CMYK JPEG and 16-bit PNG: legal, but not documented for Rekognition: converted.
        "jpeg-cmyk": Upload("bytes", f.jpeg_cmyk(), "approved", "jpeg", True),
        "png-16-bit": Upload("bytes", f.png_rgb16(), "approved", "png", True),
        # JPEG and PNG within the limits: passed on untouched (EXIF orientation and all).
        "jpeg-exif-rotated": Upload("bytes", f.jpeg_oriented(6), "approved", "jpeg", False),
        "png-alpha": Upload("bytes", f.png_rgba(), "approved", "png", False),
        "jpeg": Upload("bytes", f.jpeg(400, 300, REJECT), "rejected", "jpeg", False),
        # By URL.
        "url-jpeg-31-mp-18-mb": Upload(
            "url", padded_jpeg(6800, 4560, 18 * MB, REVIEW), "review", "jpeg", True
        ),
        "url-heic": Upload("url", f.heic(colour=REJECT), "rejected", "heif", True),
        "url-apng": Upload("url", f.apng(frames=3), "approved", "png", True, 3, 3),
        # From S3.
        "s3-jpeg": Upload("s3", f.jpeg(640, 480, REVIEW), "review", "jpeg", False),
        "s3-webp": Upload("s3", f.webp_lossy(), "approved", "webp", True),
        "s3-jpeg-12000-wide": Upload("s3", f.wide(12_000, 300), "approved", "jpeg", True),
        "s3-png-18-mb": Upload("s3", padded_png(18 * MB, REJECT), "rejected", "png", True),
    }


async def test_every_upload_gets_its_verdict(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    fake = fake_rekognition
    fake.set_colour(REJECT, [EXPLICIT])
    fake.set_colour(REVIEW, [BORDERLINE])
    cases = uploads()
    assert len(cases) == 21
    routes: dict[str, bytes] = {}
    messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
    async with image_server(routes) as origin:
        for name, upload in cases.items():
            image: dict[str, Any]
            if upload.via == "bytes":
                image = {"bytes": base64.b64encode(upload.data).decode()}
            elif upload.via == "url":
                routes[f"/{name}"] = upload.data
                image = {"url": f"{origin}/{name}"}
            else:
                await fake.put_object(BUCKET, name, upload.data)
                image = {"s3": {"bucket": BUCKET, "key": name}}
            messages.append((name.encode(), request(name, image), []))
        await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], 3)
        settings = make_settings(
            kafka_bootstrap,
            topics,
            fake,
            MODERATION_MAX_INPUT_BYTES=str(16 * 1024 * 1024),
            MODERATION_FETCH_TIMEOUT_S="30",
        )
        await produce(kafka_bootstrap, topics.input, messages)
        async with running(settings):
            records = await collect(
                kafka_bootstrap, list(topics.outputs.values()), len(cases), timeout_s=180
            )
    seen = outcomes(records)
    wrong = {}
    for name, upload in cases.items():
        (only,) = seen[name]
        topic, value = only
        got = (topic, value.get("analyzed"), value.get("error"))
        expected_analyzed = {
            "format": upload.format,
            "converted": upload.converted,
            "frames_analyzed": upload.frames,
            "frame_count": upload.frame_count,
        }
        if topic != topics.outputs[upload.verdict] or value["analyzed"] != expected_analyzed:
            wrong[name] = got
    assert not wrong, orjson.dumps(wrong, option=orjson.OPT_INDENT_2).decode()

    # The worst frame decided the GIF, and each label says which frame it was seen in.
    (gif,) = seen["gif-animated"]
    assert [(label["name"], label["frame"]) for label in gif[1]["labels"]] == [("Explicit", 5)]
    assert gif[1]["reasons"][0]["label"] == "Explicit"

    received = fake.stats.received
    # Rekognition read the S3 JPEG itself; the others it got as bytes the service made.
    by_key = {r.key: r for r in received if r.source == "s3"}
    assert set(by_key) == {"s3-jpeg"}
    assert by_key["s3-jpeg"].format == "jpeg"
    # Every image it was sent is one it takes: no input error, ever.
    for seen_image in received:
        assert seen_image.format in ("jpeg", "png"), seen_image
        assert seen_image.size <= (15 * MB if seen_image.source == "s3" else MAX_IMAGE_BYTES)
        assert seen_image.width is not None and seen_image.height is not None
        assert min(seen_image.width, seen_image.height) >= 80
        assert max(seen_image.width, seen_image.height) <= 10_000
    assert not {code for code in fake.stats.errors_by_code if code != "ThrottlingException"}
    # One call per frame analyzed: 21 uploads, 4 + 5 + 3 frames for the three animations.
    assert fake.stats.ok == sum(upload.frames for upload in cases.values())


async def test_every_upload_gets_a_verdict_from_the_local_model(
    kafka_bootstrap: str, topics: Topics, moto_s3: str
) -> None:
    """The same uploads through the offline default (pixels from the same normalization, S3
    objects downloaded with MODERATION_LOCAL_READ_S3): the model's verdicts are its own, but every
    upload gets one, and each frame is analyzed."""
    pytest.importorskip("onnxruntime", reason="the local model needs pip install '.[local]'")
    cases = uploads()
    routes: dict[str, bytes] = {}
    messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
    async with FakeRekognition(s3_endpoint_url=moto_s3) as s3, image_server(routes) as origin:
        for name, upload in cases.items():
            if upload.via == "bytes":
                image: dict[str, Any] = {"bytes": base64.b64encode(upload.data).decode()}
            elif upload.via == "url":
                routes[f"/{name}"] = upload.data
                image = {"url": f"{origin}/{name}"}
            else:
                await s3.put_object(BUCKET, name, upload.data)  # moto, through the fake's client
                image = {"s3": {"bucket": BUCKET, "key": name}}
            messages.append((name.encode(), request(name, image), []))
        await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], 3)
        settings = Settings.from_env(
            {
                **local_settings(kafka_bootstrap, topics),
                "MODERATION_BACKEND": "local",
                "MODERATION_LOCAL_WORKERS": "2",
                "MODERATION_LOCAL_READ_S3": "true",
                "S3_ENDPOINT_URL": moto_s3,
                "MODERATION_MAX_INPUT_BYTES": str(16 * 1024 * 1024),
                "MODERATION_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
                "MODERATION_FETCH_TIMEOUT_S": "30",
                "MODERATION_SHUTDOWN_GRACE_S": "5",
            }
        )
        await produce(kafka_bootstrap, topics.input, messages)
        async with running(settings) as runner:
            records = await collect(
                kafka_bootstrap, list(topics.outputs.values()), len(cases), timeout_s=300
            )
            frames = runner.metrics.registry.get_sample_value("moderation_frames_analyzed_total")
    seen = outcomes(records)
    verdict_topics = {topics.outputs[v] for v in ("approved", "rejected", "review")}
    wrong = {
        name: (seen[name][0][0], seen[name][0][1].get("error"))
        for name in cases
        if len(seen.get(name, [])) != 1 or seen[name][0][0] not in verdict_topics
    }
    assert not wrong, wrong
    for name, upload in cases.items():
        analyzed = seen[name][0][1]["analyzed"]
        assert analyzed["format"] == upload.format, name
        assert analyzed["converted"] is True, name  # pixels, whatever came in
        assert analyzed["frames_analyzed"] == upload.frames, name
    assert frames == sum(upload.frames for upload in cases.values())
