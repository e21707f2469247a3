"""How much JPEG draft decoding saves in preprocessing, against a full decode, in the same process.

    python benchmarks/decode_speed.py [--films 40] [--height 2000] [--size 299]

Films are synthetic (cxr.data.synth) at the real archive's resolution; both paths produce the same 8-bit PNG size.
"""

import argparse
import io
import time

import numpy as np
from PIL import Image

from cxr.data.images import decode_resized, to_grayscale
from cxr.data.synth import draw_film, encode_film


def full_decode(data: bytes, size: int) -> bytes:
    """The baseline: decode every pixel, then convert and resize, as a plain PIL pipeline would."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        resized = to_grayscale(image).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def seconds(function, films: list[bytes], size: int) -> float:
    started = time.perf_counter()
    for data in films:
        function(data, size)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--films", type=int, default=40)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--size", type=int, default=299)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    films = [encode_film(draw_film(rng, "virus"), args.height, rgb=False) for _ in range(args.films)]
    baseline = seconds(full_decode, films, args.size)
    draft = seconds(decode_resized, films, args.size)
    print(f"{args.films} films of {args.height} px -> {args.size} px, one core")
    print(f"full decode : {args.films / baseline:7.1f} films/s")
    print(f"draft decode: {args.films / draft:7.1f} films/s   ({baseline / draft:.1f}x the full decode)")


if __name__ == "__main__":
    main()
