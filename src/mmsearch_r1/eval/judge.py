"""LLM judge: accuracy decided by any OpenAI-compatible chat model, cached in SQLite, failures counted.

`LLMJudge(cfg).judge(question, golds, prediction) -> Verdict` renders `prompts/judge_v1.j2` (our wording of the
paper's judging rules: the gold answer or any candidate counts; a more specific correct form counts; numbers
with equivalent units count; a person needs at least first and last name; yes/no must match; hedging is wrong),
sends it as one user message through `search.web.openai_chat.ChatClient` (temperature 0), with retries of
timeouts, 5xx and throughput 429s by `search.resilience.Guard`, and parses the reply with `parse_verdict`.

Verdict statuses: "yes", "no" (the judge answered), "no_answer" (the policy gave no final answer: "no" without
asking the judge), "malformed" (the reply is not a yes/no), "error" (timeout, HTTP error, bad JSON, stopped
backend). The judge never raises for one item: failures are counted (`LLMJudge.counters`) and reported.

Cache (`JudgeCache`, one SQLite file, its own table, WAL, one connection per thread): key = sha256 of
(model, prompt version, question, gold answers, prediction), all stripped; only "yes"/"no" are stored. The
prompt version is a hash of the template file, so editing the prompt invalidates old verdicts.

The paper's judge (GPT-4o) also saw the question's image. With `with_image: true` ours does too (the image,
downscaled to `image_max_side` and JPEG-encoded, is sent as an OpenAI `image_url` data-URL part after the text,
and its pixel hash joins the cache key); by default it sees the text only (question, gold answers, prediction),
which is what the rules compare, keeping requests small and usable with text-only judge models.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mmsearch_r1.search.base import Counters, SearchError
from mmsearch_r1.types import ImageData

log = logging.getLogger(__name__)

PROMPT_FILE = "judge_v1.j2"
STATUSES = ("yes", "no", "no_answer", "malformed", "error")


@dataclass
class JudgeConfig:
    """Where the judge model is served and how to call it (YAML keys of `--judge CONFIG`)."""

    model: str = ""
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"  # the key is read from this variable, never from the file
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_attempts: int = 3  # tries per item for timeouts, 5xx and throughput 429s
    backoff_s: float = 1.0
    max_workers: int = 8  # items judged at once
    max_tokens: int = 16
    cache_path: str | None = None  # SQLite file; None = no cache
    with_image: bool = (
        False  # also send the question's image (as the paper's judge saw it); vision models only
    )
    image_max_side: int = 512  # the image is downscaled to this longest side and sent as JPEG
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("judge config: `model` is required")
        if self.max_attempts < 1:
            raise ValueError(f"judge config: max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_workers < 1:
            raise ValueError(f"judge config: max_workers must be >= 1, got {self.max_workers}")
        if self.image_max_side < 28:
            raise ValueError(f"judge config: image_max_side must be >= 28, got {self.image_max_side}")


def load_judge_config(path: str | Path) -> JudgeConfig:
    """A `JudgeConfig` from a YAML mapping (a top-level `judge:` section is also accepted)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if isinstance(data, dict) and isinstance(data.get("judge"), dict):
        data = data["judge"]
    if not isinstance(data, dict):
        raise ValueError(f"--judge {path}: expected a mapping at the top level")
    known = {f.name for f in dataclasses.fields(JudgeConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--judge {path}: unknown key(s) {unknown}; known: {sorted(known)}")
    return JudgeConfig(**data)


@dataclass
class Verdict:
    """One judged item. `correct` is None when the judge failed (status "malformed" or "error")."""

    status: str
    correct: bool | None
    raw: str = ""
    error: str | None = None
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "correct": self.correct, "raw": self.raw[:200], "error": self.error}


_LEAD = re.compile(r"^[\s*_`\"'“”‘’(\[]*(yes|no)\b", re.IGNORECASE)
_LABELLED = re.compile(r"^\s*(?:final\s+)?(?:verdict|answer|judg(?:e)?ment)\s*[:=-]\s*\**\s*(yes|no)\b", re.I)


def parse_verdict(text: str) -> bool | None:
    """True for a yes, False for a no, None if the reply is not a clear yes/no.

    Accepted: the reply starts with the word yes/no (markdown, quotes and case ignored: "Yes", "**No**.",
    "yes, it matches"), or one line reads "Verdict: yes" / "Answer: no". A reply with both a leading word and
    a contradicting labelled line is malformed.

    >>> parse_verdict("Yes"), parse_verdict(" **no**."), parse_verdict("Reasoning...\\nVerdict: YES")
    (True, False, True)
    >>> parse_verdict("Maybe") is None, parse_verdict("Yesterday") is None
    (True, True)
    """
    found: set[bool] = set()
    m = _LEAD.match(text)
    if m:
        found.add(m.group(1).lower() == "yes")
    for line in text.splitlines():
        m = _LABELLED.match(line)
        if m:
            found.add(m.group(1).lower() == "yes")
    return found.pop() if len(found) == 1 else None


def _template() -> tuple[Any, str]:
    import jinja2

    src = resources.files("mmsearch_r1").joinpath("prompts", PROMPT_FILE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=False, keep_trailing_newline=False, undefined=jinja2.StrictUndefined)
    return env.from_string(src), hashlib.sha256(src.encode("utf-8")).hexdigest()[:12]


class JudgeCache:
    """Verdicts in one SQLite file (table `judgments`); thread- and process-safe."""

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self.timeout_s = timeout_s
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, correct INTEGER NOT NULL,"
                " raw TEXT NOT NULL, model TEXT NOT NULL, prompt_version TEXT NOT NULL, created REAL NOT NULL)"
            )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    @staticmethod
    def key(model: str, prompt_version: str, question: str, golds: Sequence[str], prediction: str) -> str:
        parts = [model, prompt_version, question.strip(), [g.strip() for g in golds], prediction.strip()]
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()

    def get(self, key: str) -> tuple[bool, str] | None:
        row = self._conn().execute("SELECT correct, raw FROM judgments WHERE key=?", (key,)).fetchone()
        return None if row is None else (bool(row[0]), row[1])

    def put(self, key: str, correct: bool, raw: str, model: str, prompt_version: str) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?)",
                (key, int(correct), raw, model, prompt_version, time.time()),
            )

    def count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM judgments").fetchone()[0]


class LLMJudge:
    """Judges predictions with an OpenAI-compatible model (see the module docstring)."""

    def __init__(self, cfg: JudgeConfig, *, client: Any = None, sleep: Any = time.sleep) -> None:
        from mmsearch_r1.search.resilience import Guard
        from mmsearch_r1.search.web.openai_chat import ChatClient

        self.cfg = cfg
        self.counters = Counters()
        self.client = client or ChatClient(
            model=cfg.model,
            base_url=cfg.base_url,
            api_key_env=cfg.api_key_env,
            temperature=0.0,
            max_tokens=cfg.max_tokens,
            timeout_s=cfg.timeout_s,
            connect_timeout_s=cfg.connect_timeout_s,
            extra_body=cfg.extra_body,
        )
        self.guard = Guard(
            f"judge:{cfg.base_url}",
            max_concurrency=cfg.max_workers,
            max_attempts=cfg.max_attempts,
            backoff_s=cfg.backoff_s,
            collapse=False,
            counters=self.counters,
            sleep=sleep,
        )
        self._template, self.prompt_version = _template()
        self.cache = JudgeCache(cfg.cache_path) if cfg.cache_path else None

    def __repr__(self) -> str:
        return f"LLMJudge(model={self.cfg.model!r}, base_url={self.cfg.base_url!r}, prompt={self.prompt_version})"

    def render(self, question: str, golds: Sequence[str], prediction: str) -> str:
        return self._template.render(
            question=question.strip(),
            gold=golds[0],
            candidates=list(golds[1:]),
            prediction=prediction.strip(),
        ).strip()

    def judge(
        self, question: str, golds: Sequence[str], prediction: str | None, image: ImageData | None = None
    ) -> Verdict:
        """Judge one prediction against the gold answers (ground truth first). Never raises for the item.

        `image` (the question's image) is sent only when `cfg.with_image` is on."""
        golds = [g for g in golds if g and g.strip()]
        if not golds:
            raise ValueError("judge: no gold answers")
        if prediction is None or not prediction.strip():
            self.counters.incr("no_answer")
            return Verdict("no_answer", False)
        version, part = self.prompt_version, None
        if self.cfg.with_image and image is not None:
            try:
                part = self._image_part(image)
                version += f"+image:{image.content_hash()[:16]}"
            except (ValueError, OSError) as e:  # an unreadable image: judge on the text
                log.warning("judge: cannot send the image (%s); judging on the text only", e)
                part, version = None, self.prompt_version
        key = JudgeCache.key(self.cfg.model, version, question, golds, prediction)
        if self.cache is not None:
            hit = self._cache_get(key)
            if hit is not None:
                self.counters.incr("cache_hits")
                self.counters.incr("yes" if hit[0] else "no")
                return Verdict("yes" if hit[0] else "no", hit[0], hit[1], cached=True)
        text = self.render(question, golds, prediction)
        content: Any = text if part is None else [{"type": "text", "text": text}, part]
        messages = [{"role": "user", "content": content}]
        try:
            reply = self.guard.call(None, lambda: self.client.complete(messages))
        except SearchError as e:
            self.counters.incr("errors")
            log.warning("judge call failed: %s", e)
            return Verdict("error", None, error=str(e))
        self.counters.incr("tokens", reply.prompt_tokens + reply.completion_tokens)
        correct = parse_verdict(reply.text)
        if correct is None:
            self.counters.incr("malformed")
            log.warning("judge reply is not yes/no: %r", reply.text[:80])
            return Verdict("malformed", None, reply.text, error="reply is not a yes/no")
        self.counters.incr("yes" if correct else "no")
        if self.cache is not None:
            self._cache_put(key, correct, reply.text)
        return Verdict("yes" if correct else "no", correct, reply.text)

    def judge_many(self, items: Sequence[tuple[Any, ...]]) -> list[Verdict]:
        """Judge (question, golds, prediction[, image]) items, `max_workers` at a time; results in order."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=self.cfg.max_workers, thread_name_prefix="judge") as pool:
            return list(pool.map(lambda it: self.judge(*it), items))

    def _image_part(self, image: ImageData) -> dict[str, Any]:
        img = image.load().copy()
        img.thumbnail((self.cfg.image_max_side, self.cfg.image_max_side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        return {"type": "image_url", "image_url": {"url": url}}

    def _cache_get(self, key: str) -> tuple[bool, str] | None:
        assert self.cache is not None
        try:
            return self.cache.get(key)
        except sqlite3.Error as e:  # a broken cache must not break judging
            log.warning("judge cache read failed: %s", e)
            return None

    def _cache_put(self, key: str, correct: bool, raw: str) -> None:
        assert self.cache is not None
        try:
            self.cache.put(key, correct, raw, self.cfg.model, self.prompt_version)
        except sqlite3.Error as e:
            log.warning("judge cache write failed: %s", e)
