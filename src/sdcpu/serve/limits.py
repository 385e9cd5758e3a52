"""The server's limits, checked when a request arrives, before it allocates anything: each refusal is a
4xx whose message names the limit. The pipeline's own checks (settings, memory) follow at submission."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image

from sdcpu.errors import SdcpuError
from sdcpu.runtime.io.images import ImageTooLarge, read_image

T = TypeVar("T")
FORMATS = ["PNG", "JPEG", "WEBP"]  # the only decoders an upload reaches (not TIFF, PSD, EPS, ...)


class LimitError(SdcpuError):
    """A request over a limit; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServeLimits:
    max_width: int = 2048
    max_height: int = 2048
    max_steps: int = 150
    max_images: int = 8  # per request (A1111: batch_size x n_iter)
    max_prompt_bytes: int = 16 * 1024
    max_upload_bytes: int = 20 * 1024 * 1024  # a request body, base64 images included
    max_image_pixels: int = 16_000_000  # an uploaded image, read from its header before decoding
    queue: int = 16  # jobs waiting or running; more get 429
    kept: int = 64  # finished jobs kept in memory with their images (the gallery); older ones are dropped

    def check(self, width: int, height: int, steps: int, images: int, *texts: str) -> None:
        """Raise LimitError for a request over a size, step, batch or prompt limit."""
        if width > self.max_width or height > self.max_height:
            raise LimitError(f"{width}x{height} is over this server's {self.max_width}x{self.max_height} limit")
        if steps > self.max_steps:
            raise LimitError(f"{steps} steps is over this server's limit of {self.max_steps}")
        if images > self.max_images:
            raise LimitError(f"{images} images in one request is over this server's limit of {self.max_images}")
        for text in texts:
            if len(text.encode("utf-8", "replace")) > self.max_prompt_bytes:
                raise LimitError(f"a prompt is over this server's limit of {self.max_prompt_bytes:,} bytes")

    def decode_image(self, data: str, name: str = "image") -> Image.Image:
        """A base64 image (optionally a data: URL, as A1111 accepts) as RGB, read by the runtime's one image
        reader (`read_image`): its size checked from the header before the pixels are decoded (413 over
        this server's limit), EXIF orientation applied, 16-bit images scaled."""
        return self.read(read_image, data, name)

    def read(self, reader: Callable[..., T], data: str, name: str) -> T:
        """`reader(raw, name, max_pixels=, formats=)` on a base64 upload: read_image, or stored.png_text."""
        payload = data.partition(",")[2] if data.startswith("data:") else data  # "data:...;base64,PAYLOAD"
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise LimitError(f"the {name} is not a base64 PNG, JPEG or WebP image ({err})") from None
        try:
            return reader(raw, name, max_pixels=self.max_image_pixels, formats=FORMATS)
        except ImageTooLarge as err:
            size = f"{err.size[0]}x{err.size[1]}" if err.size else "too large to decode"
            limit = f"{self.max_image_pixels / 1e6:.0f}-megapixel limit"
            raise LimitError(f"the {name} is {size}, over this server's {limit}", status=413) from None
        except SdcpuError as err:
            raise LimitError(f"the {name} is not a base64 PNG, JPEG or WebP image ({err})") from None
