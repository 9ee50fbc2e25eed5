"""The LLM judge against a real OpenAI-compatible server on 127.0.0.1: verdicts, cache, failures counted."""

from __future__ import annotations

import json
import re

import pytest
from tests._loopback import LoopbackServer, Reply, Request

from mmsearch_r1.eval.judge import JudgeCache, JudgeConfig, LLMJudge, load_judge_config, parse_verdict


def _field(prompt: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*)$", prompt, re.M)
    return m.group(1).strip() if m else ""


class FakeJudgeModel:
    """Answers like a judge: Yes when the prediction equals (case-insensitively) the reference or an accepted
    answer. Predictions with a marker word trigger failure modes."""

    def __init__(self) -> None:
        self.failures_left = 0

    def __call__(self, req: Request) -> Reply:
        if req.path != "/v1/chat/completions" or req.method != "POST":
            return Reply(404, json={"error": {"message": "not found"}})
        body = json.loads(req.body)
        prompt = body["messages"][0]["content"]
        pred = _field(prompt, "Predicted answer")
        if "SLOW" in pred:
            return Reply(json=_completion("Yes"), delay_s=1.0)
        if "FLAKY" in pred and self.failures_left > 0:
            self.failures_left -= 1
            return Reply(503, json={"error": {"message": "overloaded"}})
        if "BADJSON" in pred:
            return Reply(200, body="{not json", headers={"Content-Type": "application/json"})
        if "NOKEY" in pred:
            return Reply(401, json={"error": {"message": "invalid api key"}})
        if "RAMBLE" in pred:
            return Reply(json=_completion("It is hard to say; both readings are possible."))
        golds = [_field(prompt, "Reference answer")]
        others = _field(prompt, "Other accepted answers")
        golds += [o.strip() for o in others.split("|")] if others else []
        ok = pred.lower() in {g.lower() for g in golds}
        return Reply(json=_completion("**Yes**." if ok else "No"))


def _completion(text: str) -> dict:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 2, "total_tokens": 102},
    }


@pytest.fixture()
def server():
    model = FakeJudgeModel()
    with LoopbackServer(model) as srv:
        srv.model = model  # type: ignore[attr-defined]
        yield srv


def _judge(srv: LoopbackServer, tmp_path, **kw) -> LLMJudge:
    opts = dict(
        model="judge-x",
        base_url=srv.url + "/v1",
        api_key_env="MMS_TEST_JUDGE_KEY",
        timeout_s=5.0,
        max_attempts=2,
        backoff_s=0.0,
        max_workers=4,
        cache_path=str(tmp_path / "judge.sqlite"),
    )
    opts.update(kw)
    return LLMJudge(JudgeConfig(**opts), sleep=lambda s: None)


def test_parse_verdict() -> None:
    assert parse_verdict("Yes") is True
    assert parse_verdict("no") is False
    assert parse_verdict("**YES**.") is True
    assert parse_verdict('"No" - the years differ') is False
    assert parse_verdict("The names match.\nVerdict: yes") is True
    assert parse_verdict("Final answer: No") is False
    for bad in ("", "Maybe", "Yesterday it was", "Nobody knows", "Yes\nVerdict: no", "I think so"):
        assert parse_verdict(bad) is None, bad


def test_verdicts_request_shape_and_counters(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MMS_TEST_JUDGE_KEY", "sk-test-judge-123456")
    judge = _judge(server, tmp_path)
    v = judge.judge("Which tower is this?", ["Eiffel Tower", "La tour Eiffel"], "la tour eiffel")
    assert (v.status, v.correct, v.cached) == ("yes", True, False)
    v = judge.judge("Which tower is this?", ["Eiffel Tower"], "Big Ben")
    assert (v.status, v.correct) == ("no", False)
    assert server.hits == 2
    req = server.requests[0]
    assert req.headers["authorization"] == "Bearer sk-test-judge-123456"
    body = json.loads(req.body)
    assert body["model"] == "judge-x" and body["temperature"] == 0.0
    prompt = body["messages"][0]["content"]
    assert "Question: Which tower is this?" in prompt
    assert "Reference answer: Eiffel Tower" in prompt and "Other accepted answers: La tour Eiffel" in prompt
    assert "first name and the last name" in prompt and "equivalent units" in prompt
    c = judge.counters.snapshot()
    assert c["yes"] == 1 and c["no"] == 1 and c["tokens"] == 204


def test_no_answer_is_no_without_a_call(server, tmp_path) -> None:
    judge = _judge(server, tmp_path)
    assert judge.judge("q", ["a"], None).status == "no_answer"
    assert judge.judge("q", ["a"], "   ").correct is False
    assert server.hits == 0
    with pytest.raises(ValueError, match="no gold"):
        judge.judge("q", ["", " "], "a")


def test_cache_hits_persist_and_are_keyed_by_model(server, tmp_path) -> None:
    items = [("Which city?", ["Paris"], "Paris"), ("Which city?", ["Paris"], "Rome")]
    first = _judge(server, tmp_path).judge_many(items)
    assert [v.correct for v in first] == [True, False] and server.hits == 2
    again = _judge(server, tmp_path)  # a new judge on the same file
    second = again.judge_many(items)
    assert [v.correct for v in second] == [True, False] and all(v.cached for v in second)
    assert server.hits == 2 and again.counters.get("cache_hits") == 2
    other_model = _judge(server, tmp_path, model="judge-y")
    assert other_model.judge(*items[0]).cached is False and server.hits == 3
    assert JudgeCache(tmp_path / "judge.sqlite").count() == 3


def test_timeout_is_counted_not_raised(server, tmp_path) -> None:
    judge = _judge(server, tmp_path, timeout_s=0.2, max_attempts=2)
    v = judge.judge("q", ["a"], "SLOW a")
    assert v.status == "error" and v.correct is None and "timed out" in (v.error or "")
    assert server.hits == 2  # retried once
    c = judge.counters.snapshot()
    assert c["errors"] == 1 and c["retries"] == 1


def test_malformed_reply_counted_and_not_cached(server, tmp_path) -> None:
    judge = _judge(server, tmp_path)
    for _ in range(2):
        v = judge.judge("q", ["a"], "RAMBLE")
        assert v.status == "malformed" and v.correct is None and "hard to say" in v.raw
    assert server.hits == 2 and judge.counters.get("malformed") == 2
    v = judge.judge("q", ["a"], "BADJSON")
    assert v.status == "error" and "malformed JSON" in (v.error or "")
    assert server.hits == 3  # a malformed body is not retried


def test_retry_after_5xx_then_stop_on_401(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MMS_TEST_JUDGE_KEY", "sk-secret-never-shown-999")
    judge = _judge(server, tmp_path, max_attempts=3)
    server.model.failures_left = 2
    v = judge.judge("q", ["FLAKY a"], "FLAKY a")
    assert v.status == "yes" and server.hits == 3 and judge.counters.get("retries") == 2
    v = judge.judge("q", ["a"], "NOKEY")
    assert v.status == "error" and "401" in (v.error or "")
    assert "sk-secret" not in (v.error or "")
    hits = server.hits
    assert judge.judge("q", ["a"], "a").status == "error"  # a stopped backend fails fast
    assert server.hits == hits


def test_judge_many_keeps_order(server, tmp_path) -> None:
    judge = _judge(server, tmp_path, cache_path=None)
    items = [(f"q{i}", [f"ans{i}"], f"ans{i}" if i % 3 else "wrong") for i in range(12)]
    verdicts = judge.judge_many(items)
    assert [v.correct for v in verdicts] == [i % 3 != 0 for i in range(12)]
    assert judge.cache is None and server.hits == 12


def test_load_judge_config(tmp_path) -> None:
    p = tmp_path / "judge.yaml"
    p.write_text("judge:\n  model: gpt-x\n  base_url: http://127.0.0.1:9/v1\n  max_workers: 2\n")
    cfg = load_judge_config(p)
    assert (cfg.model, cfg.max_workers) == ("gpt-x", 2)
    p.write_text("model: gpt-x\napi_key: sk-in-file\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['api_key'\]"):
        load_judge_config(p)
    p.write_text("base_url: http://127.0.0.1:9/v1\n")
    with pytest.raises(ValueError, match="model"):
        load_judge_config(p)


def test_with_image_sends_a_data_url_part_and_keys_the_cache(tmp_path) -> None:
    import base64
    import io

    from PIL import Image

    from mmsearch_r1.types import ImageData

    seen: list = []

    def handler(req: Request) -> Reply:
        content = json.loads(req.body)["messages"][0]["content"]
        seen.append(content)
        return Reply(json=_completion("Yes"))

    def image(color: str) -> ImageData:
        buf = io.BytesIO()
        Image.new("RGB", (1000, 500), color).save(buf, format="PNG")
        return ImageData(bytes=buf.getvalue())

    with LoopbackServer(handler) as srv:
        judge = _judge(srv, tmp_path, with_image=True, image_max_side=256)
        assert judge.judge("q", ["a"], "a", image("red")).correct is True
        assert judge.judge("q", ["a"], "a", image("red")).cached is True
        assert judge.judge("q", ["a"], "a", image("blue")).cached is False
        text_only = _judge(srv, tmp_path, with_image=False)
        assert text_only.judge("q", ["a"], "a", image("green")).cached is False
    assert len(seen) == 3
    text_part, image_part = seen[0]
    assert text_part["type"] == "text" and "Predicted answer: a" in text_part["text"]
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (256, 128) and sent.getpixel((5, 5))[0] > 200
    assert isinstance(seen[2], str)  # the text-only judge sends a plain string


def test_unreadable_image_falls_back_to_text(server, tmp_path) -> None:
    from mmsearch_r1.types import ImageData

    judge = _judge(server, tmp_path, with_image=True)
    v = judge.judge("Which city?", ["Paris"], "Paris", ImageData(bytes=b"not an image"))
    assert v.correct is True
    assert isinstance(json.loads(server.requests[0].body)["messages"][0]["content"], str)
