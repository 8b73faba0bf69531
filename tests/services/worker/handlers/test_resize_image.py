"""resizeImage with Pillow: every mode, downloads that open, and refused inputs."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.receiver import Receiver, receiver


def image_b64(size: tuple[int, int] = (400, 200), fmt: str = "PNG", mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, "red" if mode != "1" else 0).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


async def resized(api: httpx.AsyncClient, doc: dict[str, Any]) -> Image.Image:
    assert doc["status"] == "COMPLETED", doc.get("error")
    r = await api.get(doc["result"]["artifact"]["downloadPath"])
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content))


@pytest.mark.parametrize(("mode", "box", "expected"), [
    ("fit", {"width": 100, "height": 100}, (100, 50)),
    ("fit", {"width": 200}, (200, 100)),
    ("fill", {"width": 100, "height": 100}, (100, 100)),
    ("exact", {"width": 120, "height": 30}, (120, 30)),
])
async def test_each_mode(api: httpx.AsyncClient, run_job: Any, mode: str,
                         box: dict[str, int], expected: tuple[int, int]) -> None:
    doc = await run_job("resizeImage", {"imageBase64": image_b64(), "mode": mode, **box})
    image = await resized(api, doc)
    assert image.size == expected and image.format == "PNG"
    assert (doc["result"]["artifact"]["width"], doc["result"]["artifact"]["height"]) == expected


async def test_format_conversion(api: httpx.AsyncClient, run_job: Any) -> None:
    doc = await run_job("resizeImage", {"imageBase64": image_b64(mode="RGBA"), "width": 50,
                                        "format": "jpeg", "quality": 70})
    image = await resized(api, doc)
    assert image.format == "JPEG" and image.size == (50, 25)
    assert doc["artifacts"][0]["content_type"] == "image/jpeg"


@pytest.fixture
def site() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


async def test_image_by_url(api: httpx.AsyncClient, run_job: Any, site: Receiver) -> None:
    url = site.on("/cat.webp", (200, {"content-type": "image/webp"},
                                base64.b64decode(image_b64((300, 300), "WEBP"))))
    doc = await run_job("resizeImage", {"imageUrl": url, "width": 30, "height": 30})
    image = await resized(api, doc)
    assert image.size == (30, 30) and image.format == "WEBP"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_decompression_bomb_and_non_images_are_refused(run_job: Any) -> None:
    bomb = image_b64((10_000, 10_000), mode="1")  # small file, 100M pixels
    assert len(bomb) < 1_000_000
    doc = await run_job("resizeImage", {"imageBase64": bomb, "width": 10})
    assert doc["status"] == "FAILED" and doc["attempt"] == 1
    assert "pixels" in doc["error"]["message"]
    doc = await run_job("resizeImage", {"imageBase64": base64.b64encode(b"hello").decode(),
                                        "width": 10})
    assert doc["status"] == "FAILED" and "not a readable image" in doc["error"]["message"]


def encoded(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def ramp(mode: str, high: float) -> Image.Image:
    """A 64x32 left-to-right ramp from 0 to ``high`` in ``mode``."""
    image = Image.new(mode, (64, 32))
    for x in range(64):
        for y in range(32):
            value = high * x / 63
            image.putpixel((x, y), value if mode == "F" else round(value))
    return image


@pytest.mark.parametrize(("source", "fmt"), [
    (Image.new("CMYK", (64, 32), (0, 255, 255, 0)), "JPEG"),  # a print-ready photo
    (ramp("I", 1_000_000), "TIFF"),                           # 32-bit integer samples
    (ramp("F", 0.5), "TIFF"),                                 # float samples
    (Image.new("LAB", (64, 32), (50, 20, 20)), "TIFF"),
])
@pytest.mark.parametrize("output", [None, "png", "jpeg", "webp"])
async def test_every_input_mode_is_written_in_a_mode_the_output_holds(
        api: httpx.AsyncClient, run_job: Any, source: Image.Image, fmt: str,
        output: str | None) -> None:
    payload = {"imageBase64": encoded(source, fmt), "width": 32}
    doc = await run_job("resizeImage", {**payload, "format": output} if output else payload)
    image = await resized(api, doc)
    assert image.size == (32, 16) and image.mode in ("L", "RGB", "RGBA")
    if source.mode in ("I", "F"):  # the range is stretched to black..white, not clipped
        low, high = image.convert("L").getextrema()
        assert low < 20 and high > 235


async def test_input_pillow_refuses_fails_once_with_a_clean_message(run_job: Any) -> None:
    ihdr = b"IHDR" + b"\x00" * 5  # a PNG header chunk 5 bytes long instead of 13
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 5) + ihdr + struct.pack(
        ">I", zlib.crc32(ihdr))
    for data in (png, b"hello", b"GIF89a" + b"\x00" * 20):
        doc = await run_job("resizeImage", {"imageBase64": base64.b64encode(data).decode(),
                                            "width": 10})
        assert doc["status"] == "FAILED" and doc["attempt"] == 1, doc.get("error")
        message = doc["error"]["message"]
        assert " at 0x" not in message and "<_io" not in message, message
