"""README command 1's stack for real: ``python -m service local``, then ``publish`` images to it."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import signal
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("PIL") is None,
        reason="the local model needs the local extra: pip install '.[local]'",
    ),
]


def photo_like_jpeg(path: Path) -> None:
    from PIL import Image

    image = Image.linear_gradient("L").resize((320, 240)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    path.write_bytes(buffer.getvalue())


async def wait_for_line(stream: asyncio.StreamReader, needle: str, timeout_s: float) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(timeout_s):
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError("the stack exited:\n" + "".join(lines[-40:]))
            lines.append(raw.decode(errors="replace"))
            if needle in lines[-1]:
                return lines


async def test_local_stack_moderates_published_images_and_stops_cleanly(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MODERATION_", "KAFKA_", "AWS_"))
    }
    env |= {
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
        "MODERATION_CONSOLE_ADMIN_PASSWORD": "local-test-pw",
    }
    stack = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "local",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert stack.stdout is not None
    try:
        lines = await wait_for_line(stack.stdout, "try:  python -m service publish", 120)
        banner = "".join(lines)
        assert "backend: local" in banner
        assert "review console: http://127.0.0.1:" in banner
        console_line = next((line for line in lines if "review console on " in line), None)
        if console_line is None:
            console_line = (await wait_for_line(stack.stdout, "review console on ", 60))[-1]
        # Only this machine can reach it: the banner prints the admin password.
        assert "review console on 127.0.0.1:" in console_line
        photo = tmp_path / "photo.jpg"
        photo_like_jpeg(photo)
        text = tmp_path / "notes.txt"
        text.write_text("not an image")
        publish = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "publish",
            str(photo),
            str(text),
            "--timeout",
            "90",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        drain = asyncio.create_task(stack.stdout.read())  # keep the stack's pipe from filling
        out, _ = await asyncio.wait_for(publish.communicate(), 120)
        printed = out.decode()
        assert publish.returncode == 0, printed
        assert f"{photo}: APPROVED by model" in printed
        assert f"{text}: DEAD-LETTERED not_an_image" in printed
    finally:
        if stack.returncode is None:
            stack.send_signal(signal.SIGINT)  # what Ctrl-C sends
        code = await asyncio.wait_for(stack.wait(), 90)
    assert code == 0
    drain.cancel()
