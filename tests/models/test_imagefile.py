"""models.imagefile on real face crops and on damaged/unusual files built with cv2 (and Pillow for CMYK)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from namus_edge.core.errors import ImageReadError
from namus_edge.models.imagefile import check_image_file, decode_image_bytes, header_size, read_image, sniff_image


@pytest.fixture(scope="module")
def crop(shared_dir: Path) -> Path:
    return shared_dir / "namus" / "samples" / "face_crops" / "MissingPersons" / "namus2336-face0.jpg"


def _encode(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _colour(h: int = 40, w: int = 56) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[:, :, 2] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return img


@pytest.mark.parametrize(
    ("ext", "fmt"),
    [(".jpg", "jpeg"), (".png", "png"), (".gif", "gif"), (".webp", "webp"), (".bmp", "bmp"), (".tiff", "tiff")],
)
def test_sniff_and_decode_each_format(ext: str, fmt: str) -> None:
    data = _encode(ext, _colour())
    assert sniff_image(data) == fmt
    assert header_size(data) == (56, 40)
    img = decode_image_bytes(data, f"x{ext}")
    assert img.shape == (40, 56, 3) and img.dtype == np.uint8 and img.flags["C_CONTIGUOUS"]
    if fmt in ("png", "bmp", "tiff"):  # lossless: exact pixels
        assert np.array_equal(img, _colour())


@pytest.mark.parametrize("data", [b"", b"%PDF-1.4\n", b"<html>", b"\x00" * 32, b"BM"])
def test_sniff_unknown(data: bytes) -> None:
    assert sniff_image(data) is None


def test_sniff_ignores_extension(tmp_path: Path) -> None:
    liar = tmp_path / "photo.jpg"
    liar.write_bytes(_encode(".png", _colour()))
    assert sniff_image(liar) == "png"
    assert read_image(liar).shape == (40, 56, 3)


def test_real_crop(crop: Path) -> None:
    img = read_image(crop)
    assert img.shape == (126, 103, 3) and img.dtype == np.uint8
    check = check_image_file(crop)
    assert check.ok and check.reason is None
    assert (check.format, check.width, check.height, check.size_bytes) == ("jpeg", 103, 126, crop.stat().st_size)
    assert np.array_equal(check.image, img)


def test_grayscale_png() -> None:
    gray = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))
    img = decode_image_bytes(_encode(".png", gray), "gray.png")
    assert img.shape == (30, 50, 3)
    for c in range(3):
        assert np.array_equal(img[:, :, c], gray)


def test_16bit_png_scaled_to_8bit() -> None:
    g16 = np.zeros((8, 4, 3), np.uint16)
    g16[:, 0] = 0
    g16[:, 1] = 257 * 100
    g16[:, 2] = 65535
    g16[:, 3] = 1000  # 1000 / 257 = 3.89 -> 4
    data = _encode(".png", g16)
    assert data[24] == 16  # IHDR bit depth
    img = decode_image_bytes(data, "deep.png")
    assert img.dtype == np.uint8 and img.shape == (8, 4, 3)
    assert img[0, :, 0].tolist() == [0, 100, 255, 4]


def test_cmyk_jpeg() -> None:
    from PIL import Image  # test-only: Pillow (a scikit-image dependency) writes CMYK JPEGs, cv2 cannot

    buf = io.BytesIO()
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)  # pure red in CMYK
    data = buf.getvalue()
    img = decode_image_bytes(data, "cmyk.jpg")
    assert img.shape == (48, 64, 3)
    b, g, r = img[24, 32].tolist()
    assert r > 240 and g < 15 and b < 15


def test_alpha_composited_over_white() -> None:
    bgra = np.zeros((10, 20, 4), np.uint8)
    bgra[:, :10] = (255, 0, 0, 255)  # opaque blue
    bgra[:, 10:] = (0, 0, 0, 0)  # transparent black
    img = decode_image_bytes(_encode(".png", bgra), "alpha.png")
    assert img[5, 2].tolist() == [255, 0, 0]
    assert img[5, 15].tolist() == [255, 255, 255]


def test_truncated_jpeg(crop: Path, tmp_path: Path) -> None:
    data = crop.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: truncated JPEG: no end-of-image marker"):
        read_image(cut)
    check = check_image_file(cut)
    assert not check.ok and check.image is None and check.format == "jpeg"
    assert check.reason is not None and check.reason.startswith("truncated JPEG")
    assert (check.width, check.height) == (103, 126)  # from the header


def test_truncated_png(tmp_path: Path) -> None:
    data = _encode(".png", _colour(200, 200))
    with pytest.raises(ImageReadError, match=r"p\.png: truncated PNG: no IEND"):
        decode_image_bytes(data[:-20], "p.png")


def test_empty_and_unknown_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    check = check_image_file(empty)
    assert not check.ok and check.reason == "empty file (0 bytes)" and check.size_bytes == 0
    pdf = tmp_path / "flyer.jpg"
    pdf.write_bytes(b"%PDF-1.4\n%...")
    with pytest.raises(ImageReadError, match=r"flyer\.jpg: unknown image format \(first bytes 25 50 44 46"):
        read_image(pdf)
    with pytest.raises(ImageReadError, match=r"missing\.jpg: cannot read"):
        read_image(tmp_path / "missing.jpg")
    assert check_image_file(tmp_path / "missing.jpg").reason.startswith("cannot read")


def test_garbage_between_markers_is_undecodable() -> None:
    data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
    with pytest.raises(ImageReadError, match=r"junk\.jpg: OpenCV (cannot|failed to) decode"):
        decode_image_bytes(data, "junk.jpg")


def _png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 64)
    body = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + chunk + body + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _jpeg_with_declared_size(w: int, h: int) -> bytes:
    data = bytearray(_encode(".jpg", _colour(16, 16)))
    i = data.find(b"\xff\xc0")
    assert i > 0
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


@pytest.mark.parametrize("make", [_png_header_only, _jpeg_with_declared_size])
def test_huge_image_refused_before_decoding(make) -> None:
    data = make(8000, 8000)  # 64 MP declared, a few hundred bytes on disk
    assert header_size(data) == (8000, 8000)
    with pytest.raises(ImageReadError, match=r"big: 8000x8000 = 64.0 MP exceeds the 40.0 MP limit"):
        decode_image_bytes(data, "big")


def test_max_pixels_is_a_parameter(tmp_path: Path) -> None:
    data = _encode(".png", _colour(100, 100))
    with pytest.raises(ImageReadError, match=r"100x100 = 0\.0 MP exceeds the 0\.0 MP limit"):
        decode_image_bytes(data, "small.png", max_pixels=9_999)
    assert decode_image_bytes(data, "small.png", max_pixels=10_000).shape == (100, 100, 3)
    f = tmp_path / "small.png"
    f.write_bytes(data)
    assert check_image_file(f, max_pixels=9_999).reason is not None
    assert read_image(f, max_pixels=10_000).shape == (100, 100, 3)
