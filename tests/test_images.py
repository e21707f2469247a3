import io

import numpy as np
import pytest
from PIL import Image

from cxr.data.images import UnreadableImage, decode_resized


def _encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _gradient(width=120, height=90) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width, dtype=np.float64), (height, 1))


def _decoded(data: bytes, size=32) -> np.ndarray:
    image = Image.open(io.BytesIO(decode_resized(data, size)))
    assert image.format == "PNG" and image.mode == "L" and image.size == (size, size)
    return np.asarray(image)


@pytest.mark.parametrize(("mode", "format"), [
    ("L", "JPEG"), ("RGB", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("1", "PNG"),
])
def test_every_mode_becomes_8_bit_grayscale_with_its_content(mode, format):
    gray = Image.fromarray(_gradient().astype(np.uint8), mode="L")
    source = gray.convert(mode) if mode != "CMYK" else gray.convert("RGB").convert("CMYK")
    pixels = _decoded(_encoded(source, format))
    # The left-to-right gradient survives every conversion (dithered 1-bit only on average).
    assert pixels[:, -4:].mean() > pixels[:, :4].mean() + 100


def test_16_bit_png_is_stretched_to_the_range_it_uses():
    twelve_bit = (_gradient() / 255 * 4095).astype(np.uint16)
    pixels = _decoded(_encoded(Image.fromarray(twelve_bit), "PNG"))
    assert pixels.min() <= 5 and pixels.max() >= 250


def test_transparent_pixels_become_black():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, 20:, 3] = 255  # right half opaque white, left half fully transparent
    pixels = _decoded(_encoded(Image.fromarray(rgba, mode="RGBA"), "PNG"))
    assert pixels[:, :12].max() == 0 and pixels[:, -12:].min() == 255


def test_a_png_named_jpeg_is_read_by_its_content():
    data = _encoded(Image.fromarray(_gradient().astype(np.uint8)), "PNG")
    assert _decoded(data).shape == (32, 32)  # decode_resized never looks at names


def test_large_jpeg_is_decoded_at_reduced_scale_to_the_same_picture():
    film = Image.fromarray(_gradient(2000, 1600).astype(np.uint8), mode="L")
    pixels = _decoded(_encoded(film, "JPEG", quality=95), size=64)
    assert abs(float(pixels[:, 32].mean()) - 255 * 32 / 63) < 12


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty file"),
    (b"this is a text file, not an x-ray\n", "not a JPEG or PNG image"),
])
def test_non_images_are_refused_with_a_reason(data, reason):
    with pytest.raises(UnreadableImage, match=reason):
        decode_resized(data, 32)


def test_truncated_jpeg_is_refused():
    data = _encoded(Image.fromarray(_gradient(400, 300).astype(np.uint8)), "JPEG")
    with pytest.raises(UnreadableImage, match="corrupt"):
        decode_resized(data[: len(data) // 2], 32)


def test_sixteen_bit_films_are_stretched_strip_by_strip_to_the_whole_films_range():
    """The strips share the film's range: a film whose top strip is dark and bottom strip bright keeps both."""
    from cxr.data.images import STRIP_ROWS, to_grayscale

    rows = np.linspace(400, 3400, STRIP_ROWS * 3).astype(np.uint16)
    film = np.repeat(rows[:, None], 40, axis=1)
    expected = np.round((film.astype(np.float64) - 400) * (255 / 3000)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(to_grayscale(Image.fromarray(film))), expected)
    np.testing.assert_array_equal(np.asarray(to_grayscale(Image.fromarray(film.astype(np.int32)))), expected)


@pytest.mark.parametrize("kind", ["GIF", "BMP", "TIFF", "WEBP"])
def test_formats_other_than_jpeg_and_png_are_refused_with_one_reason(kind):
    data = _encoded(Image.fromarray(_gradient(64, 48).astype(np.uint8), mode="L"), kind)
    with pytest.raises(UnreadableImage, match="^not a JPEG or PNG image$"):
        decode_resized(data, 32)
