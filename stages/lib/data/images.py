"""Reading one image file into a uint8 array, the same way for every dataset adapter.

Pixel values are mapped by a fixed rule per PIL mode, never by a per-image min-max stretch,
so that one stored value means the same brightness in every image of a data set:

- L and RGB stay as they are; 1 (bilevel) -> L; LA -> L and RGBA -> RGB (alpha dropped);
  P / PA (palette) and CMYK, YCbCr, ... -> RGB.
- I;16, I;16B, ... (16-bit grayscale): v >> 8, i.e. 0..65535 onto 0..255 in equal bins
  (65535 -> 255, 257 -> 1, 255 -> 0).
- I (32-bit integer): read as 16-bit data, the usual source of such images (16-bit sensors,
  older 16-bit PNG/TIFF decoders): clipped to [0, 65535], then >> 8.
- F (32-bit float): read as intensities in [0, 1], the float convention: clipped, * 255, rounded.
"""

import hashlib

import numpy as np
from PIL import Image

from stages.lib.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}  # compared lower-case
_TO_L = {"1", "LA", "La"}
# How a non-square image becomes the model's square input (prepare.resize): squash = resize as it is (the aspect
# ratio changes); pad = centred on a black (0) square of side max(H, W); crop = the centred square of side min(H, W).
RESIZE_MODES = ("squash", "pad", "crop")


class ImageDecodeError(InputError):
    """A file that PIL cannot open or fully decode (unreadable, truncated, not an image)."""

    def __init__(self, path, reason):
        super().__init__(f"cannot decode image {path}: {reason}")
        self.path, self.reason = str(path), reason


def read_image(path, max_side=None):
    """The file as uint8 (H, W) grayscale or (H, W, 3) RGB; raises ImageDecodeError if it cannot be decoded.

    With `max_side`, larger images are shrunk (aspect kept, area filter) right after decoding, so a
    data set of 1024 px photos never sits in memory at full size.
    """
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that a truncated file fails here and not later
            pixels = to_uint8(img)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(path, f"{type(e).__name__}: {e}") from e
    h, w = pixels.shape[:2]
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.BOX), dtype=np.uint8)
    return pixels


def fit_square(pixels, mode):
    """uint8 (H, W) or (H, W, C) -> the square the mode makes of it (squash: the image unchanged).

    prepare writes this square and screen applies it to each decoded file, so both resize the same pixels.
    The centre sits at ((H - side) // 2, (W - side) // 2): an odd difference leaves the extra row or column of
    padding at the bottom or right, and crops the extra one from there.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}; expected one of {RESIZE_MODES}")
    h, w = pixels.shape[:2]
    if mode == "squash" or h == w:
        return pixels
    if mode == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return pixels[top : top + side, left : left + side]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.zeros((side, side, *pixels.shape[2:]), dtype=pixels.dtype)
    square[top : top + h, left : left + w] = pixels
    return square


def to_uint8(img):
    """A decoded PIL image as a uint8 array, by the fixed per-mode rules in the module docstring."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return np.asarray(img, dtype=np.uint8)
    if mode.startswith("I;16"):
        return (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
    if mode == "I":
        return (np.clip(np.asarray(img), 0, 65535) >> 8).astype(np.uint8)
    if mode == "F":
        return np.round(np.clip(np.asarray(img), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.asarray(img.convert("L" if mode in _TO_L else "RGB"), dtype=np.uint8)


def image_sha256(img):
    """sha256 of the decoded pixels and their shape: identical pixels give the same hash whatever the file format."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    return hashlib.sha256(repr(img.shape).encode() + img.tobytes()).hexdigest()
