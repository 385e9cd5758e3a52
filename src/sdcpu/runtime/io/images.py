"""Pixels in and out: the init image for img2img, decoded latents to PIL, and PNG text metadata."""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from sdcpu.errors import SdcpuError
from sdcpu.runtime.io.outputs import follow_umask

# 50 megapixels: a large photo (an 8192x6144 one is 50.3), about 150 MB decoded. Checked from the header,
# before the pixels are decoded: a small PNG can declare 10000x10000 and take gigabytes to decode.
MAX_INIT_PIXELS = 50_000_000
# Modes of one channel with more than 8 bits, read as 16-bit (0..65535): PNG's and TIFF's 16-bit greyscale.
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageTooLarge(SdcpuError):
    """An image whose header declares more pixels than the reader's limit (`size`, or None where Pillow's
    own decompression-bomb check found it)."""

    def __init__(self, message: str, size: tuple[int, int] | None = None):
        super().__init__(message)
        self.size = size


def read_image(
    source: str | Path | bytes | Image.Image,
    name: str = "init image",
    *,
    max_pixels: int = MAX_INIT_PIXELS,
    formats: list[str] | None = None,
) -> Image.Image:
    """An input image (an init image, a mask, a control image...: `name`) as 8-bit RGB, from a path, the
    bytes of a file, or a PIL image. The one reader of images that users and clients send (CLI and server):

    - the size is checked from the header, before the pixels are decoded (ImageTooLarge);
    - EXIF orientation is applied, as cameras and phones expect (diffusers' `load_image` and A1111 do);
    - 16-bit and floating-point images are scaled to 8 bits, not clipped (`to_rgb`);
    - every decoding failure is an SdcpuError naming the image.
    """
    return to_rgb(decode_image(source, name, max_pixels=max_pixels, formats=formats))


def decode_image(
    source: str | Path | bytes | Image.Image,
    name: str,
    *,
    max_pixels: int = MAX_INIT_PIXELS,
    formats: list[str] | None = None,
) -> Image.Image:
    """As `read_image`, in the image's own mode (a depth map keeps its 16 bits). `formats` limits the
    decoders a file can reach (the server's uploads: PNG, JPEG, WebP)."""
    label = f"the {name} {source}" if isinstance(source, (str, Path)) else f"the {name}"
    if isinstance(source, Image.Image):
        _check_pixels(source, label, max_pixels)
        return ImageOps.exif_transpose(source)
    if isinstance(source, (str, Path)):
        check_regular_file(Path(source), label)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=formats) as image:
            _check_pixels(image, label, max_pixels)
            image.load()
            return ImageOps.exif_transpose(image)
    except SdcpuError:
        raise
    except Image.DecompressionBombError as err:
        limit = f"{max_pixels / 1e6:.0f}-megapixel limit"
        raise ImageTooLarge(f"{label} is over the {limit} ({err}); scale it down first") from None
    except UnidentifiedImageError:
        kinds = f"a {', '.join(formats)} image" if formats else "an image file"
        raise SdcpuError(f"cannot read {label}: it is not {kinds}") from None
    except Exception as err:
        # Pillow's decoders raise more than OSError for a damaged file: SyntaxError for a broken PNG chunk,
        # struct.error, EOFError, IndexError and others in its plugins. A file that does not decode is the
        # user's input, never a traceback.
        raise SdcpuError(f"cannot read {label}: {err or type(err).__name__}") from None


def check_regular_file(path: Path, label: str) -> None:
    """Refuse what is not a regular file before it is opened: a FIFO (or a device) would block the read
    until another process writes, or never end. A missing file is left to the reader to name."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise SdcpuError(f"{label} is not a regular file (a folder, a pipe or a device); give an image file")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. Pillow's own conversion clips 16-bit greyscale to 255 (a white image) and floats
    likewise; here 16-bit values are scaled (65535 -> 255) and floats read as 0..1 (clipped beyond)."""
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64) / 257.0
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0) * 255.0
    else:
        return image if image.mode == "RGB" else image.convert("RGB")
    grey = Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8))
    return grey.convert("RGB")


def _check_pixels(image: Image.Image, name: str, max_pixels: int) -> None:
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(
            f"{name} is {image.width}x{image.height}, over the {max_pixels / 1e6:.0f}-megapixel limit; "
            "scale it down first",
            image.size,
        )


def image_to_array(image: Image.Image, width: int, height: int) -> np.ndarray:
    """PIL RGB -> (1, 3, H, W) float32 in [-1, 1], resized (Lanczos) as diffusers' VaeImageProcessor does."""
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return (pixels.transpose(2, 0, 1)[None] * 2.0 - 1.0).astype(np.float32)


def decoded_to_float(decoded: np.ndarray) -> np.ndarray:
    """VAE output (N, 3, H, W) in about [-1, 1] -> (N, H, W, 3) float32 in [0, 1]."""
    return np.clip(decoded / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1).astype(np.float32)


def float_to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in images]


def save_png(image: Image.Image, path: Path, metadata: dict[str, str]) -> bytes:
    """Write atomically (temporary file + rename) with `metadata` as PNG text chunks; returns the bytes
    written (a batch hashes them without reading the file back)."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(suffix=".png.partial", dir=folder)
    except OSError as err:
        raise SdcpuError(f"cannot write to {folder}: {err.strerror}; choose another --out") from err
    try:
        data = png_bytes(image, metadata)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        follow_umask(Path(tmp))
        os.replace(tmp, path)
        return data
    except OSError as err:  # a full disk or quota (at write or close), a file-size limit, an I/O error
        Path(tmp).unlink(missing_ok=True)
        reason = err.strerror or str(err)
        raise SdcpuError(f"cannot write {path}: {reason}; free some space, or write somewhere else") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(image: Image.Image, metadata: dict[str, str] | None = None) -> bytes:
    """The image as PNG bytes, with `metadata` as text chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
