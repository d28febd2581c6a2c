"""Bad input: each case is a clear error or a handled result (issue 2)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from namus_edge.core.config import load_config
from namus_edge.core.errors import ImageReadError
from namus_edge.models.analyzer import FaceAnalyzer
from namus_edge.models.imagefile import read_image


@pytest.fixture(scope="module")
def analyzer(model_cache):
    return FaceAnalyzer(load_config(), model_cache, with_age=False)


@pytest.fixture(scope="module")
def portrait(test_images):
    return cv2.imread(str(test_images / "obama_2012.jpg"))


def test_unreadable_and_zero_size(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageReadError, match=r"missing\.jpg"):
        read_image(missing)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg"):
        read_image(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match=r"notes\.jpg"):
        read_image(text)


def test_truncated_jpeg(tmp_path, test_images):
    data = (test_images / "obama_2012.jpg").read_bytes()
    p = tmp_path / "trunc.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"trunc\.jpg"):
        read_image(p)


def test_grayscale_photo_is_analysed(tmp_path, analyzer, test_images):
    grey = cv2.imread(str(test_images / "obama_2012.jpg"), cv2.IMREAD_GRAYSCALE)
    p = tmp_path / "grey.png"
    cv2.imwrite(str(p), grey)
    img = read_image(p)
    assert img.shape[2] == 3 and img.dtype == np.uint8
    assert len(analyzer.analyze(img)) == 1


def test_16bit_png_is_analysed(tmp_path, analyzer, portrait):
    p = tmp_path / "deep.png"
    cv2.imwrite(str(p), portrait.astype(np.uint16) * 257)
    img = read_image(p)
    assert img.dtype == np.uint8
    assert np.abs(img.astype(int) - portrait.astype(int)).max() <= 1
    assert len(analyzer.analyze(img)) == 1


def test_cmyk_jpeg_is_analysed(tmp_path, analyzer, portrait):
    from PIL import Image as pil  # dev extra: Pillow writes the CMYK JPEG OpenCV cannot

    p = tmp_path / "cmyk.jpg"
    pil.fromarray(portrait[:, :, ::-1]).convert("CMYK").save(p, quality=95)
    img = read_image(p)
    assert img.shape == portrait.shape
    assert len(analyzer.analyze(img)) == 1


def test_huge_image_refused_or_handled(tmp_path, analyzer, portrait):
    big = np.zeros((8000, 8000, 3), np.uint8)
    p = tmp_path / "big.jpg"
    cv2.imwrite(str(p), big, [cv2.IMWRITE_JPEG_QUALITY, 50])
    with pytest.raises(ImageReadError, match=r"big\.jpg"):
        read_image(p, max_pixels=40_000_000)
    # an 8000-px wide panorama under the pixel cap is analysed (letterboxed down), face found
    pano = np.zeros((1000, 8000, 3), np.uint8)
    pano[:, 3000 : 3000 + portrait.shape[1]] = cv2.resize(portrait, (portrait.shape[1], 1000))
    assert len(analyzer.analyze(pano)) >= 1


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.uint8),
     np.zeros((1, 1, 3), np.uint8)],
)
def test_wrong_arrays_raise_clear_error(analyzer, bad):
    with pytest.raises(ValueError, match="image"):
        analyzer.analyze(bad)


def test_blank_image_has_no_face(analyzer):
    assert analyzer.analyze(np.zeros((480, 640, 3), np.uint8), photo=True) == []
