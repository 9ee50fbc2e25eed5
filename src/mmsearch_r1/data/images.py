"""Bounding image size before it reaches the model."""

from __future__ import annotations

import math

from PIL import Image


def resize_within(img: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Scale `img` (keeping its aspect ratio) so that width*height lies within [min_pixels, max_pixels].

    Guarantees only the pixel-count bounds (up to rounding of one pixel per side); the model's image processor
    still snaps sizes to its patch grid. An image already within bounds is returned unchanged.
    """
    if min_pixels <= 0 or max_pixels < min_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    w, h = img.size
    area = w * h
    if min_pixels <= area <= max_pixels:
        return img
    scale = math.sqrt((max_pixels if area > max_pixels else min_pixels) / area)
    if area > max_pixels:
        nw, nh = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
    else:
        nw, nh = max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))
    return img.resize((nw, nh), Image.Resampling.BICUBIC)
