"""Shared records that cross layer boundaries. No torch, no heavy imports.

Images travel as `ImageData` (encoded bytes and/or a path, decoded lazily to a PIL image) or as PIL images.
Chat content is a list of parts: a `str` is text, anything else is an image (`ImageData` or `PIL.Image.Image`).
Keeping images as parts (never as placeholder strings inside text) means text coming from the web can never
smuggle an image slot into a prompt.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage


@dataclass
class ImageData:
    """An image as stored in data files: encoded bytes (JPEG/PNG/...) and/or a path. Decoded on first use."""

    bytes: bytes | None = None
    path: str | None = None
    url: str | None = None
    _decoded: Any = field(default=None, repr=False, compare=False)

    def load(self) -> PILImage.Image:
        """Decode to an RGB PIL image (cached). Raises ValueError with a clear message if undecodable."""
        if self._decoded is None:
            from PIL import Image, UnidentifiedImageError

            try:
                if self.bytes is not None:
                    img = Image.open(io.BytesIO(self.bytes))
                elif self.path is not None:
                    img = Image.open(self.path)
                else:
                    raise ValueError("image has neither bytes nor path")
                img.load()
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"cannot decode image ({self.path or 'bytes'}): {e}") from e
            self._decoded = img.convert("RGB")
        return self._decoded

    def content_hash(self) -> str:
        """Stable key for caches: sha256 of the encoded bytes (or of the decoded pixels if only a path)."""
        if self.bytes is not None:
            return hashlib.sha256(self.bytes).hexdigest()
        img = self.load()
        return hashlib.sha256(img.tobytes() + repr(img.size).encode()).hexdigest()


# A chat content part: text, or an image (ImageData or a PIL image).
Part = Union[str, ImageData, "PILImage.Image"]


def is_text(part: Part) -> bool:
    return isinstance(part, str)


def as_pil(part: Part) -> PILImage.Image:
    """Return a PIL image for an image part."""
    if isinstance(part, ImageData):
        return part.load()
    if isinstance(part, str):
        raise TypeError("text part is not an image")
    return part


@dataclass
class Message:
    """One chat message. `content` is a list of parts (text strings and images) in order."""

    role: Literal["system", "user", "assistant"]
    content: list[Part]

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else "<image>" for p in self.content)

    @property
    def images(self) -> list[Part]:
        return [p for p in self.content if not isinstance(p, str)]


@dataclass
class Answers:
    """Gold answers: the ground truth plus candidate answers (all accepted)."""

    ground_truth: str
    candidates: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        out = [self.ground_truth]
        out += [c for c in self.candidates if c not in out]
        return out


@dataclass
class Sample:
    """One question about one or more images (one row of a dataset)."""

    id: str
    question: str
    images: list[ImageData]
    answers: Answers
    data_source: str = "unknown"
    category: str | None = None  # e.g. "search_free" / "search_required"
    image_urls: list[str] | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolResult:
    """What a tool returns to the agent loop. A failing backend gives ok=False and an error text; never raises.

    `parts` is the observation content in order (text strings and images, e.g. thumbnail, title, thumbnail, ...).
    `stats` holds counters: calls, cache_hits, errors, credits, tokens, ...
    """

    parts: list[Part]
    ok: bool = True
    error: str | None = None
    latency_s: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else "<image>" for p in self.parts)

    @property
    def images(self) -> list[Part]:
        return [p for p in self.parts if not isinstance(p, str)]


@dataclass
class RewardOutput:
    """Total reward plus named components (acc, format, penalty, n_searches, ...)."""

    total: float
    components: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float]:
        return {"total": self.total, **self.components}
