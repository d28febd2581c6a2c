"""Reading case photos robustly: format sniffing, truncation checks, bounded decoding to BGR uint8.

NamUs originals come with non-standard MIME types and extensions that lie (a PNG saved as
``.jpg``), and scraped copies are often truncated. Everything here therefore looks at the bytes
only:

* :func:`sniff_image` names the format from its magic bytes;
* :func:`decode_image_bytes` / :func:`read_image` are the one way the project turns a photo into
  a BGR ``uint8`` array of shape ``(H, W, 3)``, raising :class:`edge.errors.ImageReadError` with
  the file name and a precise reason;
* :func:`check_image_file` reports the same checks as a value (for ingest reports) instead of
  raising.

Memory bound: the image size is read from the file header *before* decoding (JPEG SOF, PNG
IHDR, GIF, BMP, WebP, TIFF IFD0) and an image with more than ``max_pixels`` pixels (default
:data:`DEFAULT_MAX_PIXELS` = 40 MP, i.e. about 120 MB as BGR) is refused without decoding. An
8000x8000 (64 MP) image is refused by default; pass a larger ``max_pixels`` to accept it.

Decoding rules: JPEG is decoded with ``cv2.IMREAD_COLOR`` (applies EXIF orientation; CMYK/YCCK
is converted to BGR by libjpeg). Other formats are decoded with ``cv2.IMREAD_UNCHANGED`` and then
normalised: 16-bit samples are scaled to 8-bit (``round(v / 257)``), grayscale is replicated to
three channels, and an alpha channel is composited over white (a transparent background must
not turn into black face-like blobs).
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from namus_edge.core.errors import ImageReadError

logger = logging.getLogger(__name__)

#: Default cap on width*height accepted for decoding (40 megapixels).
DEFAULT_MAX_PIXELS = 40_000_000
#: Formats :func:`sniff_image` recognises.
IMAGE_FORMATS = ("jpeg", "png", "gif", "webp", "bmp", "tiff")
#: A JPEG's end-of-image marker must lie within this many bytes of the end of the data.
JPEG_EOI_WINDOW = 4096
#: A PNG's IEND chunk must lie within this many bytes of the end of the data.
PNG_IEND_WINDOW = 1024

_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class _RefusedError(Exception):
    """Internal: carries the reason an image was refused."""


def sniff_image(source: bytes | bytearray | memoryview | str | os.PathLike[str]) -> str | None:
    """Name an image format from its magic bytes (never from a file name or MIME type).

    Args:
        source: The image bytes (at least the first 12), or a path whose first bytes are read.

    Returns:
        ``"jpeg"``, ``"png"``, ``"gif"``, ``"webp"``, ``"bmp"`` or ``"tiff"``; None when the bytes
        match none of them (including empty input).

    Raises:
        ImageReadError: ``source`` is a path that cannot be read.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:16])
    else:
        try:
            with open(source, "rb") as fh:
                head = fh.read(16)
        except OSError as exc:
            raise ImageReadError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 14:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any SOF
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF_MARKERS and i + 9 <= n:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    endian = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(endian + "I", data[4:8])
        (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
        dims: dict[int, int] = {}
        for k in range(count):
            e = ifd + 2 + 12 * k
            tag, typ = struct.unpack(endian + "HH", data[e : e + 4])
            if tag in (256, 257):
                fmt = "H" if typ == 3 else "I"
                (dims[tag],) = struct.unpack(endian + fmt, data[e + 8 : e + 8 + struct.calcsize(fmt)])
        return (dims[256], dims[257]) if 256 in dims and 257 in dims else None
    except (struct.error, KeyError):
        return None


def header_size(data: bytes, fmt: str | None = None) -> tuple[int, int] | None:
    """Read ``(width, height)`` from an image header without decoding the pixels.

    Args:
        data: The image bytes.
        fmt: The sniffed format; sniffed when None.

    Returns:
        ``(width, height)`` in pixels, or None when the header cannot be parsed.
    """
    fmt = fmt or sniff_image(data)
    try:
        if fmt == "jpeg":
            return _jpeg_size(data)
        if fmt == "png" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        if fmt == "gif":
            w, h = struct.unpack("<HH", data[6:10])
            return int(w), int(h)
        if fmt == "bmp":
            (dib,) = struct.unpack("<I", data[14:18])
            if dib == 12:
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return abs(int(w)), abs(int(h))
        if fmt == "webp":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return int(w) & 0x3FFF, int(h) & 0x3FFF
            if chunk == b"VP8L":
                (bits,) = struct.unpack("<I", data[21:25])
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
            return None
        if fmt == "tiff":
            return _tiff_size(data)
    except struct.error:
        return None
    return None


def _to_bgr8(img: np.ndarray) -> np.ndarray:
    """Normalise a cv2-decoded array to BGR uint8 (H, W, 3)."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.float32) / 257.0) + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise _RefusedError(f"unsupported sample type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if channels == 3:
        return np.ascontiguousarray(img)
    if channels == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        out = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return (out + 0.5).astype(np.uint8)
    raise _RefusedError(f"unsupported channel count {channels}")


def _decode(data: bytes, max_pixels: int) -> tuple[str, np.ndarray]:
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if len(data) == 0:
        raise _RefusedError("empty file (0 bytes)")
    fmt = sniff_image(data)
    if fmt is None:
        raise _RefusedError(f"unknown image format (first bytes {bytes(data[:8]).hex(' ')})")
    if fmt == "jpeg" and data.rfind(b"\xff\xd9", max(0, len(data) - JPEG_EOI_WINDOW)) < 0:
        raise _RefusedError(f"truncated JPEG: no end-of-image marker (FFD9) in the last {JPEG_EOI_WINDOW} bytes")
    if fmt == "png" and data.rfind(b"IEND", max(0, len(data) - PNG_IEND_WINDOW)) < 0:
        raise _RefusedError("truncated PNG: no IEND chunk at the end")
    size = header_size(data, fmt)
    if size is not None:
        w, h = size
        if w <= 0 or h <= 0:
            raise _RefusedError(f"{fmt} header declares an empty image ({w}x{h})")
        if w * h > max_pixels:
            raise _RefusedError(
                f"{w}x{h} = {w * h / 1e6:.1f} MP exceeds the {max_pixels / 1e6:.1f} MP limit (max_pixels)"
            )
    flag = cv2.IMREAD_COLOR if fmt == "jpeg" else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error as exc:
        raise _RefusedError(f"OpenCV failed to decode the {fmt} data: {str(exc).strip().splitlines()[-1]}") from None
    if img is None or img.size == 0:
        raise _RefusedError(f"OpenCV cannot decode the {fmt} data (corrupt or unsupported variant)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise _RefusedError(f"{img.shape[1]}x{img.shape[0]} exceeds the {max_pixels / 1e6:.1f} MP limit (max_pixels)")
    return fmt, _to_bgr8(img)


def decode_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a photo from its bytes into a BGR image.

    Args:
        data: Encoded image (JPEG, PNG, GIF, WebP, BMP or TIFF; the format is sniffed).
        name: File name or URL used in error messages.
        max_pixels: Refuse images with more than this many pixels (checked from the header
            before decoding).

    Returns:
        ``np.ndarray`` of shape ``(H, W, 3)``, dtype ``uint8``, BGR channel order, C-contiguous.

    Raises:
        ImageReadError: Empty, unknown format, truncated, too large or undecodable; the message
            names ``name`` and the reason.
    """
    try:
        return _decode(bytes(data), max_pixels)[1]
    except _RefusedError as exc:
        raise ImageReadError(f"{name}: {exc}") from None


def read_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file into BGR ``uint8`` ``(H, W, 3)``; see :func:`decode_image_bytes`.

    Raises:
        ImageReadError: The file cannot be read or decoded; the message names the file.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decode_image_bytes(data, str(path), max_pixels=max_pixels)


@dataclass(frozen=True, eq=False)
class ImageCheck:
    """Outcome of :func:`check_image_file`.

    Attributes:
        path: The file checked.
        ok: True when ``image`` holds the decoded picture.
        format: Sniffed format, or None when unknown.
        reason: Why the file was refused (None when ok).
        size_bytes: File size in bytes (0 when unreadable).
        width: Decoded (else header) width in pixels, or None.
        height: Decoded (else header) height in pixels, or None.
        image: BGR ``uint8`` ``(H, W, 3)`` when ok, else None.
    """

    path: Path
    ok: bool
    format: str | None
    reason: str | None
    size_bytes: int
    width: int | None
    height: int | None
    image: np.ndarray | None


def check_image_file(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Check and decode an image file without raising for bad content.

    Detects an unreadable or zero-size file, an unknown format, a truncated JPEG (no FFD9 near
    the end) or PNG (no IEND), an image over ``max_pixels``, and anything OpenCV cannot decode.

    Args:
        path: The file.
        max_pixels: Pixel cap, as for :func:`decode_image_bytes`.

    Returns:
        An :class:`ImageCheck`; ``image`` is BGR ``uint8`` ``(H, W, 3)`` when ``ok``.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        return ImageCheck(p, False, None, f"cannot read: {exc.strerror or exc}", 0, None, None, None)
    fmt = sniff_image(data)
    size = header_size(data, fmt) if fmt else None
    try:
        fmt, img = _decode(data, max_pixels)
    except _RefusedError as exc:
        logger.debug("%s: %s", p, exc)
        w, h = size if size else (None, None)
        return ImageCheck(p, False, fmt, str(exc), len(data), w, h, None)
    return ImageCheck(p, True, fmt, None, len(data), int(img.shape[1]), int(img.shape[0]), img)
