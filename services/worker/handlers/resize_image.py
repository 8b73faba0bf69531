"""``resizeImage``: resize an image given by URL or base64 (Pillow, in a pool child process).

Guards: a byte limit on the input, a pixel limit checked from the header before any
decoding (decompression bombs), and an allow-list of formats. The output is stored as
an artifact.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from typing import Any, Literal, cast

from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import Field, ValidationInfo, field_validator, model_validator

from services.worker.handlers.common import Payload, checked_url, described, settings_of
from shared.jobtypes import JobContext, PermanentError, job_type
from shared.outbound import OutboundGuard, fetch
from shared.settings import Settings

INPUT_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"})
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MAX_OUTPUT_PIXELS = 25_000_000
"""The largest output (100 MB as RGBA): checked at submit when both sides are given,
and before resizing when one side is scaled from the input's aspect ratio."""
SAVABLE_MODES = {"png": {"1", "L", "LA", "P", "RGB", "RGBA"}, "jpeg": {"1", "L", "RGB"},
                 "webp": {"RGB", "RGBA"}}
"""The pixel modes each output format is written in; any other is converted first
(CMYK photos, LAB, 32-bit integer and float TIFFs)."""
OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class ResizeImage(Payload):
    image_url: str | None = Field(None, max_length=2048)
    image_base64: str | None = None
    width: int | None = Field(None, ge=1, le=10_000)
    height: int | None = Field(None, ge=1, le=10_000)
    mode: Literal["fit", "fill", "exact"] = "fit"
    format: Literal["png", "jpeg", "webp"] | None = None
    quality: int | None = Field(None, ge=1, le=100)

    @field_validator("image_url")
    @classmethod
    def _url_allowed(cls, url: str | None, info: ValidationInfo) -> str | None:
        return None if url is None else checked_url(url, info)

    @field_validator("image_base64")
    @classmethod
    def _is_base64(cls, data: str | None, info: ValidationInfo) -> str | None:
        if data is not None:
            settings = settings_of(info)
            max_bytes = (settings.image_max_bytes if settings
                         else Settings.model_fields["image_max_bytes"].default)
            if len(data) > 4 * -(-max_bytes // 3):  # the base64 length of max_bytes
                raise ValueError(f"the image is over {max_bytes} bytes")
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("not valid base64") from None
        return data

    @model_validator(mode="after")
    def _complete(self) -> ResizeImage:
        if (self.image_url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of imageUrl and imageBase64")
        if self.width is None and self.height is None:
            raise ValueError("give width, height, or both")
        if self.mode != "fit" and (self.width is None or self.height is None):
            raise ValueError(f"mode {self.mode!r} needs both width and height")
        if self.width and self.height and self.width * self.height > MAX_OUTPUT_PIXELS:
            raise ValueError(f"width x height is at most {MAX_OUTPUT_PIXELS} pixels")
        return self


def resize(data: bytes, job: ResizeImage, max_pixels: int) -> tuple[bytes, str, int, int]:
    """Resize in memory; raises PermanentError for input that can never work.

    NOTE: everything here works on bytes in memory (no network, no disk), so an error
    Pillow raises is about this input and the same bytes would fail the same way on a
    retry: it is permanent. Only running out of memory may pass.
    """
    try:
        return _resize(data, job, max_pixels)
    except (PermanentError, MemoryError):
        raise
    except Exception as exc:
        raise PermanentError(f"the image cannot be processed: {_plain(exc)}") from None


def _plain(exc: Exception) -> str:
    """The error's message without object reprs (``<_io.BytesIO object at 0x...>``)."""
    return OBJECT_REPR.sub("the image", str(exc)) or type(exc).__name__


def _resize(data: bytes, job: ResizeImage, max_pixels: int) -> tuple[bytes, str, int, int]:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise PermanentError("not a readable image: not a format Pillow recognises"
                             ) from None
    except (Image.DecompressionBombError, OSError) as exc:
        raise PermanentError(f"not a readable image: {_plain(exc)}") from None
    if image.format not in INPUT_FORMATS:
        raise PermanentError(f"image format {image.format} is not accepted")
    w, h = image.size
    if w * h > max_pixels:  # NOTE: from the header, before decoding a byte of pixels
        raise PermanentError(f"image is {w}x{h} = {w * h} pixels, over the {max_pixels} limit")
    try:
        image.load()
    except (OSError, Image.DecompressionBombError) as exc:
        raise PermanentError(f"image data is damaged: {_plain(exc)}") from None
    width = job.width or max(1, round(w * (job.height or h) / h))
    height = job.height or max(1, round(h * (job.width or w) / w))
    if width * height > MAX_OUTPUT_PIXELS:  # one side given, the other scaled up
        raise PermanentError(f"the output would be {width}x{height} pixels, over the "
                             f"{MAX_OUTPUT_PIXELS} limit")
    if job.mode == "fit":
        out = ImageOps.contain(image, (width, height))
    elif job.mode == "fill":
        out = ImageOps.fit(image, (width, height))
    else:
        out = image.resize((width, height))
    fmt = job.format or (image.format.lower() if image.format.lower() in OUTPUT_FORMATS
                         else "png")
    out = savable(out, fmt)
    buffer = io.BytesIO()
    options = {"quality": job.quality} if job.quality and fmt != "png" else {}
    out.save(buffer, format=fmt.upper(), **options)
    return buffer.getvalue(), fmt, out.width, out.height


def savable(image: Image.Image, fmt: str) -> Image.Image:
    """``image`` in a pixel mode ``fmt`` can be written in."""
    if image.mode == "F" or image.mode.startswith("I"):
        image = _grey(image)
    if image.mode in SAVABLE_MODES[fmt]:
        return image
    alpha = image.has_transparency_data
    return image.convert("RGBA" if alpha and "RGBA" in SAVABLE_MODES[fmt] else "RGB")


def _grey(image: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float image as 8-bit grey, its range stretched to 0-255
    (what a viewer shows; a plain conversion would clip nearly everything to white)."""
    if image.mode != "F":
        image = image.convert("I")
    low, high = cast(tuple[float, float], image.getextrema())
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        low, high = 0, 255
    scale = 255 / (high - low)
    return image.point(lambda v: (v - low) * scale).convert("L")


async def load_input(job: ResizeImage, ctx: JobContext, settings: Settings) -> bytes:
    if job.image_base64 is not None:
        data = base64.b64decode(job.image_base64)
    else:
        assert job.image_url is not None
        fetched = await fetch(ctx.http, OutboundGuard(settings.scrape_allowed_hosts, "imageUrl"),
                              job.image_url, max_bytes=settings.image_max_bytes,
                              max_redirects=settings.scrape_max_redirects,
                              timeout_seconds=settings.scrape_timeout_seconds)
        if fetched.status_code >= 400:
            raise PermanentError(f"fetching the image answered {fetched.status_code}")
        if fetched.truncated:
            raise PermanentError(f"the image is over {settings.image_max_bytes} bytes")
        data = fetched.body
    if len(data) > settings.image_max_bytes:
        raise PermanentError(f"the image is over {settings.image_max_bytes} bytes")
    return data


@job_type("resizeImage", payload=ResizeImage, timeout_seconds=120)
async def resize_image(payload: ResizeImage, ctx: JobContext) -> dict[str, Any]:
    data = await load_input(payload, ctx, ctx.settings)
    output, fmt, width, height = await ctx.run_in_process(
        resize, data, payload, ctx.settings.image_max_pixels)
    artifact = await ctx.artifacts.save(f"resized.{'jpg' if fmt == 'jpeg' else fmt}", output,
                                        f"image/{fmt}")
    return {"artifact": described(artifact, ctx, width=width, height=height)}
