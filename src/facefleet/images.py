"""Bounded image decoding: read the dimensions from the header, refuse before decoding.

Why: an encoded-size limit does not bound memory. A 1.8 MB PNG of 25000x25000 pixels decodes
to 1.9 GB of BGR. Pillow's ``Image.open`` parses only the header (it decodes nothing until
``load()``), so width x height is known for the cost of a few bytes; OpenCV then decodes only
images under the pixel bound. Every place an image enters (enroll command, gallery add,
archives, stills) goes through here.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from facefleet.errors import FacefleetError

# 40 MP: a 7680x5120 photo (120 MB of BGR) passes; anything a camera or phone makes fits.
MAX_PIXELS = 40_000_000
# Encoded size: a sane photo is a few MB; this also bounds the read itself.
MAX_FILE_BYTES = 64 << 20


def header_size(data: bytes, what: str = "image") -> tuple[int, int]:
    """(width, height) from the header only; one-line error if it is not an image."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own bound
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        raise FacefleetError(f"{what}: image is far too large (decompression bomb refused)") from None
    except Exception:  # Pillow raises many types for garbage; all mean "not an image"
        raise FacefleetError(f"{what}: cannot decode image (corrupt or not an image)") from None
    return int(w), int(h)


def decode_image_bytes(data: bytes, what: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode to BGR uint8, refusing by the header anything over ``max_pixels``."""
    import cv2

    if not data:
        raise FacefleetError(f"{what}: empty file (not an image)")
    w, h = header_size(data, what)
    if w <= 0 or h <= 0:
        raise FacefleetError(f"{what}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise FacefleetError(f"{what}: image is {w}x{h} pixels, over the limit of {max_pixels // 1_000_000} MP")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise FacefleetError(f"{what}: cannot decode image (corrupt or not an image)")
    if img.shape[0] * img.shape[1] > max_pixels:  # header lied (e.g. a multi-frame file): still bounded above
        raise FacefleetError(f"{what}: image is over the limit of {max_pixels // 1_000_000} MP")
    return img


def read_image_file(path: str | Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """Read and decode a BGR image file with one clear line for every failure."""
    p = Path(path)
    try:
        if not p.is_file():
            raise FacefleetError(f"image not found: {p}")
        size = p.stat().st_size
        if size > max_bytes:
            raise FacefleetError(f"image {p}: {size} bytes, over the limit of {max_bytes >> 20} MB")
        data = p.read_bytes()
    except OSError as e:
        raise FacefleetError(f"cannot read image {p}: {e.strerror or e}") from None
    return decode_image_bytes(data, f"image {p}", max_pixels)
