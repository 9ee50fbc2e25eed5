"""`evaluate(...)` with scripted policies (no model): exact per-source / per-category summaries, the judge on a
loopback server beside EM, the direct and rag baselines' forced turns, and the summary helpers."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image
from tests._loopback import LoopbackServer, Reply, Request

from mmsearch_r1.eval import JudgeConfig, LLMJudge, evaluate, flat_metrics
from mmsearch_r1.eval.policies import QUERY_PREFIX, RagEngine, build_policy
from mmsearch_r1.rollout.engine import ScriptedEngine
from mmsearch_r1.rollout.testing import ByteRenderer, FakeTool
from mmsearch_r1.types import Answers, ImageData, Sample, ToolResult

R = "<reason>thinking</reason>"
IMG = R + "<search><img></search>"
BAD = "no tags at all"


def txt(q: str) -> str:
    return f"{R}<text_search>{q}</text_search>"


def ans(a: str) -> str:
    return f"{R}<answer>{a}</answer>"


# id -> (data source, category, gold, candidates, scripted turns)
CASES = {
    "a0": ("srcA", "search_free", "Paris", [], [ans("paris")]),  # EM, no search
    "a1": (
        "srcA",
        "search_required",
        "Eiffel Tower",
        ["Tour Eiffel"],
        [IMG, ans("Tour Eiffel")],
    ),  # EM, image
    "a2": (
        "srcA",
        "search_required",
        "1889",
        [],
        [txt("FAIL year"), ans("RAMBLE 1890")],
    ),  # wrong, text (error)
    "b0": ("srcB", "search_required", "Louvre", [], [IMG, txt("museum"), ans("The Louvre")]),  # EM, both
    "b1": ("srcB", "search_free", "Seine", [], [BAD, BAD, BAD]),  # no answer, max_turns
    "b2": ("srcB", None, "Eiffel Tower", [], [ans("the Eiffel Tower in Paris")]),  # SubEM only
}


def _samples() -> list[Sample]:
    img = Image.new("RGB", (28, 28), "red")
    return [
        Sample(
            sid, f"question {sid}?", [ImageData(bytes=None, path=None, _decoded=img)], Answers(g, c), src, cat
        )
        for sid, (src, cat, g, c, _) in CASES.items()
    ]


def _script(req) -> str:
    sid = req.key.split("#")[0]
    return CASES[sid][4][req.turn_index]


def _tools() -> dict:
    def text(arg, sample):
        if arg and arg.startswith("FAIL"):
            return ToolResult(["The text search failed."], ok=False, error="backend down")
        return ToolResult([f"summary for {arg}"])

    return {
        "image_search": FakeTool([Image.new("RGB", (28, 28), "blue"), "title one"]),
        "text_search": FakeTool(respond=text),
    }


def _engine(r: ByteRenderer) -> ScriptedEngine:
    return ScriptedEngine(_script, r.encode, r.special.im_end)


class SubstringJudge:
    """A judge model on loopback: Yes if an accepted answer appears in the prediction; RAMBLE -> no verdict."""

    def __call__(self, req: Request) -> Reply:
        prompt = json.loads(req.body)["messages"][0]["content"]
        golds = [re.search(r"^Reference answer: (.*)$", prompt, re.M).group(1)]
        other = re.search(r"^Other accepted answers: (.*)$", prompt, re.M)
        golds += other.group(1).split(" | ") if other else []
        pred = re.search(r"^Predicted answer: (.*)$", prompt, re.M).group(1).lower()
        ok = any(g.lower() in pred for g in golds)
        text = "Let me think." if "ramble" in pred else ("Yes" if ok else "No")
        return Reply(json={"choices": [{"message": {"role": "assistant", "content": text}}], "usage": {}})


def test_summary_counts_exact_with_judge(tmp_path) -> None:
    r = ByteRenderer()
    with LoopbackServer(SubstringJudge()) as srv:
        judge = LLMJudge(
            JudgeConfig(model="j", base_url=srv.url, api_key_env=None, max_attempts=1, cache_path=None)
        )
        summary = evaluate(
            _samples(),
            engine=_engine(r),
            renderer=r,
            tools=_tools(),
            out_dir=tmp_path,
            judge=judge,
            chunk_size=4,
        )
        assert srv.hits == 5  # b1 has no answer: not sent to the judge
    recs = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [x["id"] for x in recs] == list(CASES)
    by_id = {x["id"]: x for x in recs}
    assert by_id["a2"]["turns"][0]["tool"]["ok"] is False and by_id["a2"]["n_tool_errors"] == 1
    assert by_id["b1"]["finish_reason"] == "max_turns" and by_id["b1"]["final_answer"] is None
    assert by_id["b0"]["actions"] == ["image_search", "text_search", "answer"]
    assert by_id["b0"]["turns"][1]["tool"]["arg"] == "museum"
    assert "<image>" in by_id["a1"]["turns"][0]["observation"]
    assert [i["source"] for i in by_id["a1"]["images"]] == ["question", "turn 1 image_search"]
    assert by_id["a2"]["judge"]["status"] == "malformed" and by_id["b2"]["judge"]["correct"] is True

    a, b, o = summary["by_source"]["srcA"], summary["by_source"]["srcB"], summary["overall"]
    assert (a["n"], b["n"], o["n"]) == (3, 3, 6)
    assert a["acc_em"] == pytest.approx(2 / 3) and b["acc_em"] == pytest.approx(1 / 3)
    assert b["acc_subem"] == pytest.approx(2 / 3) and o["acc_subem"] == pytest.approx(4 / 6)
    # judge: a2 malformed (excluded), b1 no answer (judged wrong): A 2/2, B 2/3 (b0, b2)
    assert (a["acc_judge"], a["judge_judged"], a["judge_failures"]) == (1.0, 2, 1)
    assert b["acc_judge"] == pytest.approx(2 / 3) and o["judge_failures"] == 1
    assert a["search_ratio_any"] == pytest.approx(2 / 3) and a["search_ratio_image_only"] == pytest.approx(
        1 / 3
    )
    assert a["search_ratio_text_only"] == pytest.approx(1 / 3) and a["search_ratio_both"] == 0.0
    assert b["search_ratio_both"] == pytest.approx(1 / 3) and b["searches_per_question"] == pytest.approx(
        2 / 3
    )
    assert o["tool_calls"] == 4 and o["tool_error_ratio"] == pytest.approx(1 / 4)
    assert a["turns_mean"] == pytest.approx(5 / 3) and b["turns_mean"] == pytest.approx(7 / 3)
    assert o["finish"] == {"answer": 5, "max_turns": 1}
    assert o["format_ok"] == pytest.approx(5 / 6) and o["answered"] == pytest.approx(5 / 6)
    # reward: a0 1.0, a1 0.91, a2 0.1, b0 0.91, b1 0.0, b2 0.1
    assert o["reward_mean"] == pytest.approx((1.0 + 0.91 + 0.1 + 0.91 + 0.0 + 0.1) / 6)
    cats = summary["by_category"]
    assert set(cats) == {"search_free", "search_required"}  # b2 has no category
    assert cats["search_free"]["n"] == 2 and cats["search_required"]["acc_em"] == pytest.approx(2 / 3)
    assert summary["by_source_category"]["srcB"]["search_free"]["n"] == 1
    assert summary["judge"]["counters"]["malformed"] == 1

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["overall"] == o and on_disk["policy"] == "agent"
    md = (tmp_path / "summary.md").read_text()
    assert "| srcA | 3 | 66.7 | 66.7 | 100.0 |" in md and "**overall**" in md and "## By category" in md
    flat = flat_metrics(summary)
    assert flat["val/srcA/acc"] == 1.0 and flat["val/all/n"] == 6.0
    assert flat["val/category_search_free/search_ratio"] == 0.0


def test_direct_policy_offers_no_tools(tmp_path) -> None:
    r = ByteRenderer()
    scripts = {"d0": ans("Paris"), "d1": IMG}
    engine = ScriptedEngine(lambda req: scripts[req.key.split("#")[0]], r.encode, r.special.im_end)
    samples = [Sample(k, "Which city?", [], Answers("Paris"), "s") for k in scripts]
    tools = _tools()
    summary = evaluate(samples, engine=engine, renderer=r, tools=tools, out_dir=tmp_path, policy="direct")
    recs = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [x["finish_reason"] for x in recs] == ["answer", "tool_limit"]
    assert tools["image_search"].calls == [] and summary["overall"]["search_ratio_any"] == 0.0
    assert summary["overall"]["acc_em"] == 0.5 and summary["protocol"]["max_turns"] == 1
    prompt = r.decode(engine.calls[0][0].prompt_ids)
    assert "You cannot search the web" in prompt and "<search><img></search>" not in prompt


def test_rag_policy_forces_the_searches(tmp_path) -> None:
    r = ByteRenderer()
    queries = {"q0": "eiffel tower</text_search> and more text", "q1": "louvre museum", "q2": "  "}
    seen: list[tuple[str, int]] = []

    def script(req):
        sid = req.key.split("#")[0]
        seen.append((sid, req.turn_index))
        if req.turn_index == 1:
            assert r.decode(req.prompt_ids).endswith(QUERY_PREFIX)
            return queries[sid]
        return ans("x")

    engine = ScriptedEngine(script, r.encode, r.special.im_end, logprob=-0.25)
    samples = [Sample(k, "What is it?", [], Answers("x"), "s") for k in queries]
    tools = _tools()
    evaluate(samples, engine=engine, renderer=r, tools=tools, out_dir=tmp_path, policy="rag")
    recs = {x["id"]: x for x in map(json.loads, (tmp_path / "samples.jsonl").read_text().splitlines())}
    assert all(t != 0 for _, t in seen)  # turn 1 is forced whole: the model is never asked
    assert [c[0] for c in tools["image_search"].calls] == [None, None, None]
    assert sorted(c[0] for c in tools["text_search"].calls) == ["eiffel tower", "louvre museum"]
    assert recs["q0"]["actions"] == ["image_search", "text_search", "answer"]
    assert recs["q1"]["turns"][1]["text"].endswith("louvre museum</text_search>")  # closing tag forced
    assert recs["q2"]["actions"] == ["image_search", "invalid", "answer"]  # empty query: refused, then answer
    assert recs["q2"]["n_text_searches"] == 0 and recs["q0"]["finish_reason"] == "answer"
    assert recs["q0"]["tokens"]["sampled"] < recs["q0"]["tokens"]["generated"]  # forced tokens not sampled


def test_rag_engine_marks_forced_tokens() -> None:
    r = ByteRenderer()
    inner = ScriptedEngine(lambda req: "abc</text_search>zz", r.encode, r.special.im_end, logprob=-1.0)
    rag = RagEngine(inner, r.encode, r.decode, r.special.im_end)
    from mmsearch_r1.rollout.engine import GenerationRequest, SamplingParams

    out0, out1 = rag.generate(
        [
            GenerationRequest([1, 2], 400, key="s#0", turn_index=0),
            GenerationRequest([1, 2], 400, key="s#0", turn_index=1),
        ],
        SamplingParams(greedy=True),
    )
    assert out0.sampled == [False] * len(out0.token_ids) and len(inner.calls) == 1
    text = r.decode(out1.token_ids)
    assert text == QUERY_PREFIX + "abc</text_search><|im_end|>"
    flags = out1.sampled_flags()
    n_pre = len(r.encode(QUERY_PREFIX))
    assert flags[:n_pre] == [False] * n_pre and all(flags[n_pre:-1]) and flags[-1] is False
    assert out1.logprobs[n_pre] == -1.0 and out1.logprobs[0] == 0.0
    with pytest.raises(ValueError, match="no room"):
        rag.generate([GenerationRequest([1], 10, key="s#0", turn_index=1)], SamplingParams(greedy=True))


def test_bad_inputs_named(tmp_path) -> None:
    r = ByteRenderer()
    s = [Sample("x1", "q?", [], Answers(" ", []), "s")]
    with pytest.raises(ValueError, match="'x1'.*no gold"):
        evaluate(s, engine=_engine(r), renderer=r, tools={}, out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        build_policy("best", engine=_engine(r), renderer=r, tools={})
    with pytest.raises(ValueError, match="missing: text_search"):
        build_policy("rag", engine=_engine(r), renderer=r, tools={"image_search": FakeTool()})
