"""Decoding any image the archive may hold into a square 8-bit grayscale PNG of the stored size.

The real archive is mostly 8-bit grayscale JPEG with a few hundred RGB ones (docs/decisions.md); anything else
(RGBA, CMYK, palette, 16-bit, a PNG named .jpeg) is converted, and a file that cannot be decoded raises
`UnreadableImage` with a reason that preprocessing records.

Two formats only, JPEG and PNG (FORMATS): the archive's and the ones `cxr export`'s SavedModel decodes, so that
predict, serve, the training data and the export accept the same files and refuse the others with one reason
(NOT_JPEG_OR_PNG). Memory: a film is converted to grayscale strip by strip (STRIP_ROWS rows at a time), so
decoding needs the decoded film (1 to 4 bytes a pixel, by mode) plus one byte a pixel for the grayscale film,
never a full-size float copy (docs/serving.md, "Memory").
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# 8,000 x 8,000: ten times the largest real film (about 2,500 x 2,500, docs/decisions.md), a quarter of
# PIL's own decompression-bomb limit.
MAX_PIXELS = 64_000_000
# The formats every way into a model reads: the archive's (JPEG) and the lossless one films are exported in.
FORMATS = ("JPEG", "PNG")
NOT_JPEG_OR_PNG = "not a JPEG or PNG image"
# Rows converted at a time: a strip of an 8,000-pixel-wide film is a few MB, whatever the film's height.
STRIP_ROWS = 256
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# The most a film needs while it decodes, in bytes a pixel: the decoded film (4 for RGBA, CMYK or 32-bit modes, 2
# for 16-bit, 1 for 8-bit grayscale) plus the 8-bit grayscale film (1); a strip's temporaries are not counted.
DECODE_BYTES_PER_PIXEL = 5


class UnreadableImage(Exception):
    """The file is empty, truncated, corrupt or not an image; the message is the reason."""


def _stretch(low: float, high: float):
    """A function from 16-bit pixels (an array) to 8-bit ones that stretches [low, high] to [0, 255]: 16-bit
    X-rays use 10-14 bits of the range, so what the whole film uses is stretched, not the type's range."""
    scale = 255.0 / (high - low) if high > low else 0.0
    if low >= 0 and high <= 65535:
        # Every 16-bit value's result at once (64 KB), then one lookup per pixel: no float copy of the pixels.
        table = np.round((np.arange(65536, dtype=np.float64) - low) * scale).clip(0, 255).astype(np.uint8)
        return lambda pixels: table[pixels]
    return lambda pixels: np.round((pixels.astype(np.float64) - low) * scale).astype(np.uint8)


def _strip_to_grayscale(strip: Image.Image, stretch) -> Image.Image:
    """Part of a film as 8-bit grayscale ("L"); stretch maps a 16-bit mode's pixels (_stretch), else None."""
    if stretch is not None:
        return Image.fromarray(stretch(np.asarray(strip)), mode="L")
    if strip.mode in ("RGBA", "LA", "PA") or (strip.mode == "P" and "transparency" in strip.info):
        # Transparent pixels are outside the film: composite over black, the film's background.
        rgba = strip.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    # RGB, CMYK, P, YCbCr, 1, ...: PIL's luminance conversion (via RGB where needed).
    return strip.convert("RGB").convert("L") if strip.mode not in ("RGB", "1") else strip.convert("L")


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit grayscale ("L"), STRIP_ROWS rows at a time: the temporary arrays of a conversion
    are a strip's, not the film's."""
    if image.mode == "L":
        return image
    stretch = _stretch(*map(float, image.getextrema())) if image.mode in SIXTEEN_BIT_MODES else None
    gray = Image.new("L", image.size)
    for top in range(0, image.height, STRIP_ROWS):
        strip = image.crop((0, top, image.width, min(top + STRIP_ROWS, image.height)))
        gray.paste(_strip_to_grayscale(strip, stretch), (0, top))
    return gray


def decode_resized(data: bytes, size: int) -> bytes:
    """Decode image bytes, convert to grayscale and resize to size x size; return PNG bytes.

    Stretches to a square like Keras' flow_from_directory did in the seed, so backbones see the same framing.
    """
    if not data:
        raise UnreadableImage("empty file")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            # Checked on the header, before any pixel is decoded: a decompression bomb never reaches memory.
            if image.width * image.height > MAX_PIXELS:
                raise UnreadableImage(f"too large to decode safely: {image.width} x {image.height} pixels "
                                      f"(limit {MAX_PIXELS:,})")
            # JPEG can decode at 1/2, 1/4 or 1/8 scale straight from the DCT: about 5x faster on 2000 px films.
            image.draft("L" if image.mode in ("L", "RGB") else None, (size, size))
            image.load()
            gray = to_grayscale(image)
            resized = gray.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    except UnidentifiedImageError:
        raise UnreadableImage(NOT_JPEG_OR_PNG) from None
    except Image.DecompressionBombError as error:  # PIL's own guard, for formats whose size shows late
        raise UnreadableImage(f"too large to decode safely: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports truncated and corrupt files as OSError (or SyntaxError for broken headers).
        raise UnreadableImage(f"corrupt image: {error}") from None
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG", compress_level=1)  # lossless; level 1 is 3x faster to write than 6
    return buffer.getvalue()
