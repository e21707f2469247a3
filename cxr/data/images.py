"""Decoding any image the archive may hold into a square 8-bit grayscale PNG of the stored size.

The real archive is mostly 8-bit grayscale JPEG with a few hundred RGB ones (docs/decisions.md); anything else
(RGBA, CMYK, palette, 16-bit, a PNG named .jpeg) is converted, and a file that cannot be decoded raises
`UnreadableImage` with a reason that preprocessing records.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# 8,000 x 8,000: ten times the largest real film (about 2,500 x 2,500, docs/decisions.md), a quarter of
# PIL's own decompression-bomb limit; a 64-megapixel 8-bit film still decodes in about 64 MB.
MAX_PIXELS = 64_000_000


class UnreadableImage(Exception):
    """The file is empty, truncated, corrupt or not an image; the message is the reason."""


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit grayscale ("L")."""
    if image.mode == "L":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit X-rays use 10-14 bits of the range: stretch what is used, not the type's full range.
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels are outside the film: composite over black, the film's background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    # RGB, CMYK, P, YCbCr, 1, ...: PIL's luminance conversion (via RGB where needed).
    return image.convert("RGB").convert("L") if image.mode not in ("RGB", "1") else image.convert("L")


def decode_resized(data: bytes, size: int) -> bytes:
    """Decode image bytes, convert to grayscale and resize to size x size; return PNG bytes.

    Stretches to a square like Keras' flow_from_directory did in the seed, so backbones see the same framing.
    """
    if not data:
        raise UnreadableImage("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
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
        raise UnreadableImage("not an image") from None
    except Image.DecompressionBombError as error:  # PIL's own guard, for formats whose size shows late
        raise UnreadableImage(f"too large to decode safely: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports truncated and corrupt files as OSError (or SyntaxError for broken headers).
        raise UnreadableImage(f"corrupt image: {error}") from None
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG", compress_level=1)  # lossless; level 1 is 3x faster to write than 6
    return buffer.getvalue()
