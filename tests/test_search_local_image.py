"""Local image search: the built-in embedder finds procedurally drawn objects again under augmentation
(top-1 threshold), index persistence, thumbnails, errors, the open_clip embedder's missing-package error.

The generator draws distinct objects: a shape (8 kinds, random position/size/rotation) in one colour on a
background of another colour with a texture (solid, stripes, dots, checker); no two share all four. Queries are
augmented copies: a random crop of 70-95 % of the side, a resize (64-200 px, aspect jitter +-15 %), brightness,
contrast and saturation jitter (0.7-1.3 each), a hue shift of up to +-6/256, Gaussian noise (sigma 2-8) and JPEG
quality 30-70. Measured top-1 of the built-in embedder (100 objects, seeds 0-7): 0.92, 0.96, 1.00, 0.96, 0.96,
0.97, 0.97, 0.94 (mean 0.96). The test uses seeds 0 and 1 (0.94 together) with threshold 0.9: below the worst
seed measured, so a real regression fails it: on the same two seeds, dropping the gradient block gives
0.80, dropping the hue block 0.895, chromaticity histograms alone 0.45.
"""

from __future__ import annotations

import io
import json
import math
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from mmsearch_r1.config import SearchConfig
from mmsearch_r1.search.base import ImageQuery, SearchError
from mmsearch_r1.search.embedders import BuiltinEmbedder, OpenClipEmbedder, make_embedder
from mmsearch_r1.search.local_image import LocalImageBackend, build_image_index, read_image_rows
from mmsearch_r1.types import ImageData

SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "hexagon", "bars"]
TEXTURES = ["solid", "stripes", "dots", "checker"]
PALETTE = [
    (220, 30, 30),
    (30, 160, 40),
    (40, 70, 220),
    (240, 200, 20),
    (150, 40, 190),
    (20, 190, 200),
    (240, 120, 20),
    (250, 250, 250),
    (20, 20, 20),
    (120, 80, 40),
    (240, 120, 180),
    (120, 120, 120),
]


def _poly(cx, cy, r, n, rot, inner=None):
    pts = []
    for i in range(n * (2 if inner else 1)):
        rr = r if (inner is None or i % 2 == 0) else inner
        a = rot + i * 2 * math.pi / (n * (2 if inner else 1))
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_object(rng, shape, fg, bg, texture, size=128):
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    # background texture, in a darker/lighter bg shade
    alt = tuple(int(c * 0.6) if sum(bg) > 300 else min(255, c + 70) for c in bg)
    step = rng.randint(10, 18)
    if texture == "stripes":
        for x in range(-size, size * 2, step):
            d.line([(x, 0), (x + size, size)], fill=alt, width=step // 3)
    elif texture == "dots":
        for x in range(step // 2, size, step):
            for y in range(step // 2, size, step):
                d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=alt)
    elif texture == "checker":
        for x in range(0, size, step):
            for y in range(0, size, step):
                if (x // step + y // step) % 2:
                    d.rectangle([x, y, x + step - 1, y + step - 1], fill=alt)
    cx, cy = size / 2 + rng.uniform(-12, 12), size / 2 + rng.uniform(-12, 12)
    r = rng.uniform(0.25, 0.38) * size
    rot = rng.uniform(0, math.pi)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        d.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=bg)
    elif shape == "square":
        d.polygon(_poly(cx, cy, r, 4, rot), fill=fg)
    elif shape == "triangle":
        d.polygon(_poly(cx, cy, r, 3, rot), fill=fg)
    elif shape == "hexagon":
        d.polygon(_poly(cx, cy, r, 6, rot), fill=fg)
    elif shape == "star":
        d.polygon(_poly(cx, cy, r, 5, rot, inner=r * 0.45), fill=fg)
    elif shape == "cross":
        w = r * 0.35
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
    elif shape == "bars":
        for k in range(3):
            x0 = cx - r + k * r * 0.75
            d.rectangle([x0, cy - r, x0 + r * 0.4, cy + r], fill=fg)
    return img


def make_objects(n: int = 100, seed: int = 0) -> list[Image.Image]:
    rng = random.Random(seed)
    combos = set()
    out = []
    while len(out) < n:
        shape, tex = rng.choice(SHAPES), rng.choice(TEXTURES)
        fg, bg = rng.sample(range(len(PALETTE)), 2)
        key = (shape, tex, fg, bg)
        if key in combos:
            continue
        combos.add(key)
        out.append(draw_object(rng, shape, PALETTE[fg], PALETTE[bg], tex))
    return out


def augment(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    f = rng.uniform(0.70, 0.95)
    cw, ch = int(w * f), int(h * f)
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    side = rng.randint(64, 200)
    img = img.resize((side, int(side * rng.uniform(0.85, 1.15))), Image.Resampling.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + rng.randint(-6, 6)) % 256
    img = Image.fromarray(hsv, "HSV").convert("RGB")
    arr = np.asarray(img).astype(np.float64)
    arr += np.random.default_rng(rng.randint(0, 2**31)).normal(0, rng.uniform(2, 8), arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(30, 70))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def top1(embedder, seed: int, n: int = 100) -> float:
    objs = make_objects(n, seed)
    rng = random.Random(1000 + seed)
    queries = [augment(o, rng) for o in objs]
    sims = embedder.embed(queries) @ embedder.embed(objs).T
    return float((sims.argmax(1) == np.arange(n)).mean())


def test_builtin_embedder_top1_under_augmentation():
    emb = BuiltinEmbedder()
    acc = (top1(emb, 0) + top1(emb, 1)) / 2
    assert acc >= 0.9, acc


def test_builtin_embedder_vectors():
    emb = make_embedder("builtin")
    objs = make_objects(4, 3)
    v = emb.embed(objs)
    assert v.shape == (4, emb.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb.embed(objs[:1]), v[:1])  # deterministic
    # brightness scaling alone barely moves the vector; another object is far away
    darker = ImageEnhance.Brightness(objs[0]).enhance(0.7)
    assert float(emb.embed([darker])[0] @ v[0]) > 0.97
    assert float(v[0] @ v[1]) < 0.95
    assert make_embedder(emb.spec()).spec() == emb.spec()
    with pytest.raises(ValueError, match="unknown embedder"):
        make_embedder("nope")


def test_open_clip_embedder_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights_path"):
        OpenClipEmbedder("ViT-B-32", str(tmp_path / "missing.bin"))
    w = tmp_path / "w.bin"
    w.write_bytes(b"x")
    with pytest.raises(ImportError, match="open_clip_torch"):
        make_embedder({"type": "open_clip", "model": "ViT-B-32", "weights_path": str(w)})


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgidx")
    objs = make_objects(30, 5)
    (root / "pics").mkdir()
    rows = []
    for i, o in enumerate(objs):
        o.save(root / "pics" / f"{i}.png")
        rows.append({"image": f"pics/{i}.png", "title": f"Object {i}", "url": f"http://img/{i}"})
    (root / "images.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    build_image_index(root / "images.jsonl", root / "idx" / "image", thumb_max_side=64)
    return root, objs


def test_index_search_and_round_trip(index):
    root, objs = index
    backend = LocalImageBackend(str(root / "idx"))
    again = LocalImageBackend(str(root / "idx" / "image"))
    rng = random.Random(7)
    correct = 0
    for i in range(0, 30, 3):
        q = ImageQuery(image=ImageData(bytes=png_bytes(augment(objs[i], rng))), key=f"s{i}")
        hits = backend.search(q, 3)
        assert len(hits) == 3
        assert [h.title for h in hits] == [h.title for h in again.search(q, 3)]
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
        correct += hits[0].title == f"Object {i}"
        top = hits[0]
        assert top.url == "http://img/" + top.title.split()[-1] and top.source == "local"
        thumb = top.thumbnail.load()
        assert max(thumb.size) <= 64 and top.thumbnail.bytes[:2] == b"\xff\xd8"  # JPEG from the index folder
    assert correct >= 9
    assert backend.search(ImageQuery(image=ImageData(bytes=png_bytes(objs[0]))), 100)[
        0
    ].score == pytest.approx(1.0, abs=1e-4)
    assert len(backend.search(ImageQuery(image=ImageData(bytes=png_bytes(objs[0]))), 100)) == 30


def test_search_errors(index):
    root, _ = index
    backend = LocalImageBackend(str(root / "idx"))
    with pytest.raises(SearchError, match="query image"):
        backend.search(ImageQuery(url="http://x/y.png", key="k"), 3)
    with pytest.raises(SearchError, match="cannot decode"):
        backend.search(ImageQuery(image=ImageData(bytes=b"not an image")), 3)
    with pytest.raises(ValueError, match="dim"):
        LocalImageBackend(str(root / "idx"), embedder={"type": "builtin", "hue_bins": 4})
    with pytest.raises(FileNotFoundError, match="image"):
        LocalImageBackend(str(root / "pics"))


def test_bad_image_rows(tmp_path):
    p = tmp_path / "images.jsonl"
    p.write_text('{"image": "a.png", "title": "A"}\n{"title": "B"}\n')
    with pytest.raises(ValueError, match=r"images.jsonl:2: field 'image'"):
        read_image_rows(p)
    p.write_text('{"image": "missing.png", "title": "A", "url": "u"}\n')
    with pytest.raises(ValueError, match=r"row 1: field 'image': cannot read"):
        build_image_index(p, tmp_path / "out")


def test_factory_builds_local_image_backend(index):
    from mmsearch_r1.search.factory import build_image_backend

    root, objs = index
    backend = build_image_backend(
        SearchConfig(image_backend={"type": "local", "index_dir": str(root / "idx")})
    )
    hits = backend.search(ImageQuery(image=ImageData(bytes=png_bytes(objs[4]))), 2)
    assert hits[0].title == "Object 4"
