"""Procedural image identities and their renderings (PIL + numpy only).

An `Identity` is a drawn object: a shape (its family fixes the entity's kind) in a foreground colour, on a
background colour with a texture (plain, stripes, dots or checks) and a small accent mark in a third colour at one
of four corners. `render(identity, rng, size, vary)` draws it at 2x and downsamples (antialiasing), with a
rendering variation of strength `vary` in [0, 1]: a random rotation (up to 14 degrees at vary=1), scale (0.82-1.12),
shift (up to 9 % of the side), brightness and contrast (+-20 %), colour saturation (+-15 %) and Gaussian pixel
noise (sigma up to 7). Query images use vary=1; the image index holds renderings with vary=0.35, so no query is a
copy of an indexed image. Everything is driven by the given `random.Random`, so a world is reproducible by seed.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

# The kinds of entity and the shapes that draw them (a kind is recognisable from its shape family).
KIND_SHAPES: dict[str, tuple[str, ...]] = {
    "statue": ("triangle", "star"),
    "emblem": ("cross", "hexagon"),
    "vessel": ("circle", "ring"),
    "machine": ("square", "bars"),
}
TEXTURES = ("plain", "stripes", "dots", "checks")
PALETTE: tuple[tuple[int, int, int], ...] = (
    (214, 40, 40),
    (36, 110, 210),
    (40, 170, 70),
    (240, 200, 30),
    (150, 60, 190),
    (240, 130, 30),
    (245, 245, 245),
    (25, 25, 25),
    (120, 75, 40),
    (40, 200, 200),
    (235, 110, 170),
    (125, 125, 125),
)
CORNERS = ("nw", "ne", "sw", "se")


@dataclass(frozen=True)
class Identity:
    """What makes an entity's pictures its own. Colours are indices into `PALETTE`."""

    kind: str
    shape: str
    fg: int
    bg: int
    accent: int
    texture: str
    corner: str

    def key(self) -> tuple[str, int, int, str]:
        """The part of the identity that must differ between two entities (shape, colours, texture)."""
        return (self.shape, self.fg, self.bg, self.texture)


def draw_identity(rng: random.Random, kind: str) -> Identity:
    """A random identity of `kind` (shape from the kind's family, three distinct colours)."""
    fg, bg, accent = rng.sample(range(len(PALETTE)), 3)
    return Identity(
        kind=kind,
        shape=rng.choice(KIND_SHAPES[kind]),
        fg=fg,
        bg=bg,
        accent=accent,
        texture=rng.choice(TEXTURES),
        corner=rng.choice(CORNERS),
    )


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None) -> list:
    k = n * (2 if inner else 1)
    pts = []
    for i in range(k):
        rr = r if (inner is None or i % 2 == 0) else inner
        a = rot + i * 2 * math.pi / k
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _shade(c: tuple[int, int, int]) -> tuple[int, int, int]:
    """A darker or lighter version of a background colour for its texture."""
    if sum(c) > 330:
        return tuple(int(v * 0.62) for v in c)  # type: ignore[return-value]
    return tuple(min(255, v + 75) for v in c)  # type: ignore[return-value]


def _draw(ident: Identity, side: int, rot: float, scale: float, dx: float, dy: float) -> Image.Image:
    bg = PALETTE[ident.bg]
    img = Image.new("RGB", (side, side), bg)
    d = ImageDraw.Draw(img)
    alt = _shade(bg)
    step = side // 6
    if ident.texture == "stripes":
        for x in range(-side, 2 * side, step):
            d.line([(x, 0), (x + side, side)], fill=alt, width=max(1, step // 3))
    elif ident.texture == "dots":
        for x in range(step // 2, side, step):
            for y in range(step // 2, side, step):
                d.ellipse([x - step / 6, y - step / 6, x + step / 6, y + step / 6], fill=alt)
    elif ident.texture == "checks":
        for x in range(0, side, step):
            for y in range(0, side, step):
                if (x // step + y // step) % 2:
                    d.rectangle([x, y, x + step - 1, y + step - 1], fill=alt)
    # accent mark in its corner
    a = side * 0.2
    cx0 = side * (0.16 if ident.corner[1] == "w" else 0.84) + dx
    cy0 = side * (0.16 if ident.corner[0] == "n" else 0.84) + dy
    d.rectangle([cx0 - a / 2, cy0 - a / 2, cx0 + a / 2, cy0 + a / 2], fill=PALETTE[ident.accent])
    # the object
    fg = PALETTE[ident.fg]
    cx, cy, r = side / 2 + dx, side / 2 + dy, side * 0.3 * scale
    shape = ident.shape
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        d.ellipse([cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5], fill=PALETTE[ident.bg])
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r * 1.1, 4, math.pi / 4 + rot), fill=fg)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r * 1.15, 3, -math.pi / 2 + rot), fill=fg)
    elif shape == "hexagon":
        d.polygon(_polygon(cx, cy, r, 6, rot), fill=fg)
    elif shape == "star":
        d.polygon(_polygon(cx, cy, r * 1.15, 5, -math.pi / 2 + rot, inner=r * 0.5), fill=fg)
    elif shape == "cross":
        w = r * 0.36
        arm = [(-r, -w), (r, -w), (r, w), (-r, w)]
        for pts in (arm, [(y, x) for x, y in arm]):
            c, s = math.cos(rot), math.sin(rot)
            d.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=fg)
    elif shape == "bars":
        for k in range(3):
            x0 = cx - r + k * r * 0.78
            d.rectangle([x0, cy - r, x0 + r * 0.44, cy + r], fill=fg)
    else:  # pragma: no cover - guarded by KIND_SHAPES
        raise ValueError(f"unknown shape {shape!r}")
    return img


def render(ident: Identity, rng: random.Random, size: int = 56, vary: float = 1.0) -> Image.Image:
    """One rendering of `ident` as a `size` x `size` RGB image, varied with strength `vary` (module docstring)."""
    side = 2 * size
    rot = math.radians(rng.uniform(-14, 14) * vary)
    scale = 1.0 + rng.uniform(-0.18, 0.12) * vary
    dx = rng.uniform(-0.09, 0.09) * side * vary
    dy = rng.uniform(-0.09, 0.09) * side * vary
    img = _draw(ident, side, rot, scale, dx, dy).resize((size, size), Image.Resampling.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(1.0 + rng.uniform(-0.2, 0.2) * vary)
    img = ImageEnhance.Contrast(img).enhance(1.0 + rng.uniform(-0.2, 0.2) * vary)
    img = ImageEnhance.Color(img).enhance(1.0 + rng.uniform(-0.15, 0.15) * vary)
    sigma = rng.uniform(2.0, 7.0) * vary
    if sigma > 0:
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, (size, size, 3))
        arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "RGB")
    return img


def png_bytes(img: Image.Image) -> bytes:
    """Encode as PNG (deterministic for the same pixels)."""
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False)
    return buf.getvalue()
