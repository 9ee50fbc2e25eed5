"""Image embedders for the local image index (layer 2, numpy + PIL only; no torch at import time).

An `Embedder` maps a list of PIL images to an `(n, dim)` float32 array of L2-normalized rows, so inner product
is cosine similarity. Two are provided:

- `BuiltinEmbedder` ("builtin"): a hand-designed descriptor that needs no downloaded weights. It is made to
  find the same picture again under crops (70-95 % of the side), resizes, colour jitter (brightness, contrast,
  saturation, a small hue shift), JPEG compression and pixel noise. The image is resized to a fixed square and
  described by three parts, each over a spatial pyramid (the whole image and its 2x2 quadrants):
  1. a soft 2-D histogram of chromaticity (r, g) = (R, G) / (R + G + B), which does not change when brightness
     is scaled; pixels near black (where chromaticity is noise) are down-weighted;
  2. a circular histogram of the hue angle around the grey point of that plane (a saturation change moves a
     pixel along the ray from grey, so its angle stays), weighted by distance from grey, plus one bin for the
     achromatic mass;
  3. a soft histogram of brightness relative to the image's mean brightness (separates black, grey and white
     areas yet ignores a global brightness change);
  4. magnitude-weighted histograms of unsigned gradient orientation on a slightly blurred grey image (shape).
  Each block is square-rooted (Hellinger), L2-normalized, weighted, concatenated and normalized again.
  Measured top-1 on 100 procedurally drawn objects with augmented queries: 0.96 mean over 8 seeds (0.92-1.00),
  about 2.2 ms per image on one CPU core (generator in `tests/test_search_local_image.py`).
- `OpenClipEmbedder` ("open_clip"): an open_clip model loaded from a local weights file, for users who have one.
  `open_clip` (and torch) are imported lazily on first use; a clear error says what is missing.

`make_embedder(spec)` builds one from a name or a `{"type": ..., ...options}` dict.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Turns images into L2-normalized float32 vectors of size `dim`."""

    name: str
    dim: int

    def embed(self, images: list[PILImage.Image]) -> np.ndarray: ...

    def spec(self) -> dict[str, Any]: ...


def _l2(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def _soft_hist_1d(values: np.ndarray, weights: np.ndarray, bins: int, lo: float, hi: float) -> np.ndarray:
    """Histogram with linear (bilinear in 1-D) vote splitting between neighbouring bin centres."""
    pos = (np.clip(values, lo, hi) - lo) / (hi - lo) * bins - 0.5
    i0 = np.floor(pos).astype(np.int64)
    f = pos - i0
    hist = np.zeros(bins, dtype=np.float64)
    for idx, w in ((i0, 1.0 - f), (i0 + 1, f)):
        ok = (idx >= 0) & (idx < bins)
        np.add.at(hist, idx[ok], (weights * w)[ok])
    return hist


def _soft_hist_2d(a: np.ndarray, b: np.ndarray, weights: np.ndarray, bins: int) -> np.ndarray:
    """Soft 2-D histogram of values in [0, 1] x [0, 1] (bilinear vote splitting)."""
    pa = np.clip(a, 0.0, 1.0) * bins - 0.5
    pb = np.clip(b, 0.0, 1.0) * bins - 0.5
    ia, ib = np.floor(pa).astype(np.int64), np.floor(pb).astype(np.int64)
    fa, fb = pa - ia, pb - ib
    hist = np.zeros((bins, bins), dtype=np.float64)
    for da, wa in ((0, 1.0 - fa), (1, fa)):
        for db, wb in ((0, 1.0 - fb), (1, fb)):
            xa, xb = ia + da, ib + db
            ok = (xa >= 0) & (xa < bins) & (xb >= 0) & (xb < bins)
            np.add.at(hist, (xa[ok], xb[ok]), (weights * wa * wb)[ok])
    return hist.ravel()


def _cells(h: int, w: int) -> list[tuple[slice, slice, float]]:
    """Spatial pyramid: the whole image (weight 1) and its 2x2 quadrants (weight 0.5 each)."""
    out = [(slice(0, h), slice(0, w), 1.0)]
    for r in range(2):
        for c in range(2):
            out.append((slice(r * h // 2, (r + 1) * h // 2), slice(c * w // 2, (c + 1) * w // 2), 0.5))
    return out


class BuiltinEmbedder:
    """Weight-free colour + shape descriptor (see the module docstring)."""

    name = "builtin"

    def __init__(
        self,
        size: int = 48,
        chroma_bins: int = 6,
        bright_bins: int = 6,
        orient_bins: int = 8,
        hue_bins: int = 12,
        weights: tuple[float, float, float, float] = (0.5, 1.0, 2.5, 1.0),
    ) -> None:
        if size < 8:
            raise ValueError(f"builtin embedder: size must be >= 8, got {size}")
        self.size = size
        self.chroma_bins = chroma_bins
        self.bright_bins = bright_bins
        self.orient_bins = orient_bins
        self.hue_bins = hue_bins
        self.weights = tuple(float(w) for w in weights)
        n_cells = len(_cells(size, size))
        self.dim = n_cells * (chroma_bins * chroma_bins + bright_bins + orient_bins + hue_bins + 1)

    def spec(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "size": self.size,
            "chroma_bins": self.chroma_bins,
            "bright_bins": self.bright_bins,
            "orient_bins": self.orient_bins,
            "hue_bins": self.hue_bins,
            "weights": list(self.weights),
        }

    def embed(self, images: list[PILImage.Image]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, img in enumerate(images):
            out[i] = self._one(img)
        return out

    def _one(self, img: PILImage.Image) -> np.ndarray:
        from PIL import Image, ImageFilter

        s = self.size
        rgb = img.convert("RGB").resize((s, s), Image.Resampling.BILINEAR)
        x = np.asarray(rgb, dtype=np.float64) / 255.0
        total = x.sum(axis=2) + 1e-6
        r, g = x[..., 0] / total, x[..., 1] / total
        bright = total / 3.0
        # Hue angle around the grey point of the chromaticity plane: a saturation change moves a pixel
        # along the ray from grey, so the angle stays put. Weighted by distance from grey (saturating).
        dr, dg = r - 1.0 / 3.0, g - 1.0 / 3.0
        hue = np.mod(np.arctan2(dg, dr), 2 * np.pi)
        sat = np.hypot(dr, dg)
        # Chromaticity is meaningless near black: weight pixels by brightness, saturating at 0.25.
        cw = np.clip(bright / 0.25, 0.05, 1.0)
        hw = cw * np.clip(sat / 0.08, 0.0, 1.0)
        rel = bright / (bright.mean() + 1e-6)
        grey = rgb.convert("L").filter(ImageFilter.GaussianBlur(0.8))
        gy_img = np.asarray(grey, dtype=np.float64) / 255.0
        gx = np.zeros_like(gy_img)
        gy = np.zeros_like(gy_img)
        gx[:, 1:-1] = gy_img[:, 2:] - gy_img[:, :-2]
        gy[1:-1, :] = gy_img[2:, :] - gy_img[:-2, :]
        mag = np.hypot(gx, gy)
        mag = np.where(mag > 0.02, mag, 0.0)  # ignore the faint gradients JPEG and noise leave behind
        ang = np.mod(np.arctan2(gy, gx), np.pi)

        wc, wb, wo, wh = self.weights
        blocks = []
        for rs, cs, cell_w in _cells(s, s):
            ch = _soft_hist_2d(r[rs, cs].ravel(), g[rs, cs].ravel(), cw[rs, cs].ravel(), self.chroma_bins)
            bh = _soft_hist_1d(rel[rs, cs].ravel(), np.ones(rel[rs, cs].size), self.bright_bins, 0.0, 2.0)
            oh = self._orient_hist(ang[rs, cs].ravel(), mag[rs, cs].ravel())
            hh = self._circ_hist(hue[rs, cs].ravel(), hw[rs, cs].ravel(), self.hue_bins, 2 * np.pi)
            hh = np.append(hh, (cw[rs, cs] - hw[rs, cs]).sum())  # achromatic mass
            for h, w in ((ch, wc), (bh, wb), (oh, wo), (hh, wh)):
                blocks.append(_l2(np.sqrt(h)) * w * cell_w)
        return _l2(np.concatenate(blocks)).astype(np.float32)

    def _orient_hist(self, ang: np.ndarray, mag: np.ndarray) -> np.ndarray:
        """Circular soft histogram of unsigned orientation (period pi), weighted by gradient magnitude."""
        return self._circ_hist(ang, mag, self.orient_bins, np.pi)

    @staticmethod
    def _circ_hist(ang: np.ndarray, mag: np.ndarray, n: int, period: float) -> np.ndarray:
        """Circular soft histogram of angles in [0, period) with n bins."""
        pos = ang / period * n - 0.5
        i0 = np.floor(pos).astype(np.int64)
        f = pos - i0
        hist = np.zeros(n, dtype=np.float64)
        np.add.at(hist, i0 % n, mag * (1.0 - f))
        np.add.at(hist, (i0 + 1) % n, mag * f)
        return hist


class OpenClipEmbedder:
    """An open_clip image tower loaded from a local weights file (no download). Imports torch lazily."""

    name = "open_clip"

    def __init__(self, model: str, weights_path: str, device: str = "cpu", dim: int | None = None) -> None:
        self.model_name = model
        self.weights_path = weights_path
        self.device = device
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"open_clip embedder: weights_path {weights_path!r} is not a file")
        try:
            import open_clip  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "the open_clip embedder needs the 'open_clip_torch' package (pip install open_clip_torch); "
                "or use the weight-free embedder {'type': 'builtin'}"
            ) from e
        self._model: Any = None
        self._preprocess: Any = None
        self.dim = dim if dim is not None else self._load()

    def spec(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "model": self.model_name,
            "weights_path": self.weights_path,
            "dim": self.dim,
        }

    def _load(self) -> int:
        import open_clip
        import torch

        model, _, preprocess = open_clip.create_model_and_transforms(
            self.model_name, pretrained=self.weights_path, device=self.device
        )
        model.eval()
        self._model, self._preprocess = model, preprocess
        with torch.no_grad():
            from PIL import Image

            probe = preprocess(Image.new("RGB", (32, 32))).unsqueeze(0).to(self.device)
            return int(model.encode_image(probe).shape[-1])

    def embed(self, images: list[PILImage.Image]) -> np.ndarray:
        import torch

        if self._model is None:
            self._load()
        batch = torch.stack([self._preprocess(im.convert("RGB")) for im in images]).to(self.device)
        with torch.no_grad():
            feats = self._model.encode_image(batch).float().cpu().numpy()
        return _l2(feats).astype(np.float32)


EMBEDDERS: dict[str, type] = {"builtin": BuiltinEmbedder, "open_clip": OpenClipEmbedder}


def make_embedder(spec: str | dict[str, Any] | None = None) -> Embedder:
    """Build an embedder from a name (`"builtin"`) or a dict `{"type": "open_clip", "model": ..., ...}`."""
    if spec is None:
        spec = {"type": "builtin"}
    if isinstance(spec, str):
        spec = {"type": spec}
    opts = dict(spec)
    typ = opts.pop("type", None)
    if typ not in EMBEDDERS:
        raise ValueError(f"unknown embedder type {typ!r}; known: {', '.join(sorted(EMBEDDERS))}")
    try:
        return EMBEDDERS[typ](**opts)
    except TypeError as e:
        raise ValueError(f"embedder {typ!r}: bad options: {e}") from None
