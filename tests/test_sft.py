"""SFT warm start: conversations format, RL loss mask and rollout parity, padding invariance, a real tiny run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmsearch_r1.config import ProtocolConfig, RolloutConfig
from mmsearch_r1.config_io import load_config
from mmsearch_r1.data.errors import DataError
from mmsearch_r1.model import load_model, load_processor
from mmsearch_r1.protocol import parse_turn
from mmsearch_r1.rl.batch import PolicyForward
from mmsearch_r1.rl.sft import check_sft_config, collate, masked_nll_sum
from mmsearch_r1.rl.sft_data import (
    build_conversation,
    read_conversations,
    tokenize_conversation,
    write_conversations,
)
from mmsearch_r1.rollout import ScriptedEngine, run_rollouts, sampling_params
from mmsearch_r1.rollout.testing import FakeTool
from mmsearch_r1.types import Answers, Sample, ToolResult

COLORS = ["red", "green", "blue", "yellow"]
NAMES = ["Paris", "Rome", "Oslo", "Lima"]


def img(color: str, size: tuple[int, int] = (56, 56)) -> Image.Image:
    return Image.new("RGB", size, color)


def sample(i: int) -> Sample:
    return Sample(f"q{i}", "Which city is this?", [img(COLORS[i])], Answers(NAMES[i]))


def thumb_result(i: int) -> ToolResult:
    return ToolResult([img(COLORS[i], (56, 84)), f"{NAMES[i]} photo\n"])


def scripts() -> dict[str, list[str]]:
    return {
        "q0": ["<reason>I know this place.</reason><answer>Paris</answer>"],
        "q1": [
            "<reason>I do not know it.</reason><search><img></search>",
            "<reason>The results name it.</reason><answer>Rome</answer>",
        ],
        # a refused second image search, then the answer
        "q2": [
            "<reason>Search.</reason><search><img></search>",
            "<reason>Again.</reason><search><img></search>",
            "<reason>Now I know.</reason><answer>Oslo</answer>",
        ],
        "q3": [
            "<reason>Text.</reason><text_search>Lima city</text_search>",
            "<reason>Found.</reason><answer>Lima</answer>",
        ],
    }


def tools() -> dict[str, FakeTool]:
    return {
        "image_search": FakeTool(respond=lambda arg, s: thumb_result(int(s.id[1:]))),
        "text_search": FakeTool(["1. Lima is the capital of Peru.\n"]),
    }


def conversations(protocol: ProtocolConfig) -> list:
    res = {"image_search": lambda s: thumb_result(int(s.id[1:])), "text_search": lambda s: None}
    out = []
    for sid, texts in scripts().items():
        s = sample(int(sid[1:]))
        turns = []
        for t in texts:
            kind = parse_turn(t).kind
            result = res["image_search"](s) if kind == "image_search" else None
            if kind == "text_search":
                result = ToolResult(["1. Lima is the capital of Peru.\n"])
            turns.append((t, result))
        out.append(build_conversation(s, turns, protocol=protocol))
    return out


@pytest.fixture(scope="module")
def renderer(tiny_model_dir):
    return load_processor(tiny_model_dir)


# ----------------------------------------------------------------------------------------------------------
# Loss mask and parity with the agent loop
# ----------------------------------------------------------------------------------------------------------
def test_conversation_renders_token_for_token_as_the_agent_loop(renderer) -> None:
    protocol = ProtocolConfig(max_text_searches=1)
    rollout = RolloutConfig(
        n=1, max_new_tokens_per_turn=256, max_response_tokens=4096, max_prompt_tokens=4096
    )
    sc = scripts()
    engine = ScriptedEngine(
        lambda req: sc[req.key.split("#")[0]][req.turn_index], renderer.encode, renderer.special.im_end
    )
    samples = [sample(i) for i in range(4)]
    trajs = run_rollouts(
        samples,
        engine=engine,
        renderer=renderer,
        tools=tools(),
        protocol=protocol,
        rollout=rollout,
        params=sampling_params(rollout, greedy=True),
    )
    convs = conversations(protocol)
    assert [t.finish_reason for t in trajs] == ["answer"] * 4
    assert (
        trajs[2].turns[1].refusal
    )  # the second image search was refused, and the conversation says the same
    for traj, conv in zip(trajs, convs, strict=True):
        tc = tokenize_conversation(conv, renderer, max_length=100_000)
        assert tc.input_ids == traj.input_ids
        assert tc.loss_mask == [0] * len(traj.prompt_ids) + traj.loss_mask
        assert tc.image_grid_thw == [tuple(g) for g in traj.image_grid_thw]
        assert len(tc.images) == len(traj.images)


def test_mask_is_assistant_text_and_im_end_only(renderer) -> None:
    conv = conversations(ProtocolConfig())[1]
    tc = tokenize_conversation(conv, renderer, max_length=100_000)
    trained = [t for t, m in zip(tc.input_ids, tc.loss_mask, strict=True) if m]
    texts = [m.content[0] for m in conv.messages if m.role == "assistant"]
    assert renderer.decode(trained) == "".join(t + "<|im_end|>" for t in texts)
    sp = renderer.special
    assert not any(
        m and t in (sp.image_pad, sp.vision_start, sp.im_start)
        for t, m in zip(tc.input_ids, tc.loss_mask, strict=True)
    )
    assert tc.input_ids[-1] == sp.im_end and tc.loss_mask[-1] == 1  # ends with the last assistant turn
    n_pads = sum(t == sp.image_pad for t in tc.input_ids)
    assert n_pads == sum(t * h * w // 4 for t, h, w in tc.image_grid_thw) and len(tc.image_grid_thw) == 2


def test_truncation_keeps_whole_assistant_turns_and_their_images(renderer) -> None:
    conv = conversations(ProtocolConfig())[1]  # prompt + image, turn 1, tool turn + thumbnail, turn 2
    full = tokenize_conversation(conv, renderer, max_length=100_000)
    first_end = full.loss_mask.index(0, full.loss_mask.index(1))  # one past turn 1's <|im_end|>
    cut = tokenize_conversation(conv, renderer, max_length=len(full.input_ids) - 1)
    assert cut.truncated and cut.input_ids == full.input_ids[:first_end]
    assert len(cut.images) == 1 and cut.image_grid_thw == full.image_grid_thw[:1]
    assert tokenize_conversation(conv, renderer, max_length=first_end - 1) is None


def test_build_conversation_rejects_inconsistent_turns() -> None:
    p = ProtocolConfig()
    with pytest.raises(ValueError, match="turn 1 makes an allowed image_search"):
        build_conversation(
            sample(0), [("<reason>a</reason><search><img></search>", None), ("x", None)], protocol=p
        )
    with pytest.raises(ValueError, match="turn 1 answers but more turns follow"):
        build_conversation(
            sample(0), [("<reason>a</reason><answer>b</answer>", None), ("x", None)], protocol=p
        )
    with pytest.raises(ValueError, match="does not end the conversation"):
        build_conversation(
            sample(0), [("<reason>a</reason><search><img></search>", thumb_result(0))], protocol=p
        )


# ----------------------------------------------------------------------------------------------------------
# File format
# ----------------------------------------------------------------------------------------------------------
def test_jsonl_and_parquet_round_trip(tmp_path: Path, renderer) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    convs = conversations(ProtocolConfig())
    path = write_conversations(tmp_path / "c.jsonl", convs)
    back = read_conversations(path)
    assert [c.id for c in back] == ["q0", "q1", "q2", "q3"]
    for a, b in zip(convs, back, strict=True):
        assert (
            tokenize_conversation(a, renderer, 10**5).input_ids
            == tokenize_conversation(b, renderer, 10**5).input_ids
        )

    (tmp_path / "img").mkdir()
    img("red").save(tmp_path / "img" / "a.png")
    buf = io.BytesIO()
    img("blue").save(buf, format="PNG")
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "path": "img/a.png"}, {"type": "text", "text": "Q?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<reason>r</reason><answer>a</answer>"}]},
    ]
    # parquet: a JSON-string column, and a list-of-structs column with raw image bytes
    pq.write_table(pa.table({"id": ["x"], "messages": [json.dumps(msgs)]}), tmp_path / "a.parquet")
    structs = [
        {
            "role": "user",
            "content": [{"type": "image", "bytes": buf.getvalue()}, {"type": "text", "text": "Q?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "<reason>r</reason><answer>a</answer>"}]},
    ]
    pq.write_table(pa.table({"messages": [structs]}), tmp_path / "b.parquet")
    got = read_conversations([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert [c.id for c in got] == ["x", "b.parquet:0"]
    assert [m.role for m in got[0].messages] == ["system", "user", "assistant"]
    assert got[0].messages[1].images[0].load().getpixel((0, 0)) == (255, 0, 0)
    assert got[1].messages[0].images[0].load().getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize(
    ("line", "where", "what"),
    [
        ({"messages": [{"role": "bot", "content": "x"}]}, "field 'messages[0].role'", "must be one of"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages[0].content[0]",
            "'path'",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "path": "nope.png"}]}]},
            "messages[0].content[0].path",
            "not found",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "bytes_b64": "!!"}]}]},
            "bytes_b64",
            "base64",
        ),
        ({"messages": [{"role": "user", "content": "q"}]}, "field 'messages'", "no assistant message"),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "image", "bytes_b64": "QUJD"}]}]},
            "messages[0].content",
            "text only",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "content[0].type", "'audio'"),
        ({"id": 1}, "field 'messages'", "non-empty list"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path: Path, line, where, what) -> None:
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(ok) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError) as e:
        read_conversations(p)
    msg = str(e.value)
    assert "bad.jsonl row 1" in msg and where in msg and what in msg


def test_config_errors_name_the_key() -> None:
    cfg = load_config(None, ["sft.batch_size=0", "sft.lr=0"])
    with pytest.raises(ValueError) as e:
        check_sft_config(cfg)
    for key in ("sft.train_files", "model.path", "sft.batch_size", "sft.lr"):
        assert key in str(e.value)


# ----------------------------------------------------------------------------------------------------------
# Padding invariance and a real run
# ----------------------------------------------------------------------------------------------------------
def test_right_padded_batch_gives_each_row_its_own_logprobs(tiny_model_dir, renderer) -> None:
    policy = PolicyForward(load_model(tiny_model_dir))
    items = [tokenize_conversation(c, renderer, 10**5) for c in conversations(ProtocolConfig())[:3]]
    assert len({len(it.input_ids) for it in items}) == 3  # different lengths: real padding
    with torch.no_grad():
        together = collate(items, renderer, "cpu")
        logp, _ = policy(together)
        nll, count = masked_nll_sum(policy, together)
        assert count == sum(sum(it.loss_mask) for it in items)
        total = 0.0
        for b, it in enumerate(items):
            alone, _ = policy(collate([it], renderer, "cpu"))
            r = alone.shape[1]
            assert torch.allclose(logp[b, :r], alone[0], atol=1e-5)
            assert int((alone != 0).sum()) == sum(it.loss_mask)  # exactly the trained tokens carry a log-prob
            total += float(-alone.sum())
        assert float(nll) == pytest.approx(total, rel=1e-5)


def _small_sft_args(tmp: Path, tiny_model_dir: Path, steps: int) -> list[str]:
    convs = conversations(ProtocolConfig())[:2]
    write_conversations(tmp / "c.jsonl", convs)
    return [
        f"model.path={tiny_model_dir}",
        f"sft.train_files=[{tmp / 'c.jsonl'}]",
        f"sft.run_dir={tmp / 'run'}",
        f"sft.max_steps={steps}",
        "sft.batch_size=3",  # not a divisor of the data: the stream crosses epochs mid-step
        "sft.micro_batch_size=2",
        "sft.lr=1e-3",
        "sft.save_every=2",
        "optim.schedule=cosine",
    ]


def test_resume_gives_the_uninterrupted_run(tmp_path: Path, tiny_model_dir) -> None:
    from safetensors.torch import load_file

    from mmsearch_r1.cli import main
    from mmsearch_r1.rl.sft import run_sft

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert main(["sft", "--no-progress", *_small_sft_args(tmp_path / "a", tiny_model_dir, 4)]) == 0

    def crash(step: int, total: int, metrics: dict) -> None:
        if step == 3:  # killed during step 3, after the checkpoint of step 2
            raise KeyboardInterrupt

    cfg_b = load_config(None, _small_sft_args(tmp_path / "b", tiny_model_dir, 4))
    with pytest.raises(KeyboardInterrupt):
        run_sft(cfg_b, progress=crash)
    assert (
        main(["sft", "--no-progress", "--resume", *_small_sft_args(tmp_path / "b", tiny_model_dir, 4)]) == 0
    )
    a = load_file(str(tmp_path / "a" / "run" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "final" / "model.safetensors"))
    start = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], start[k]) for k in a)  # every parameter was trained
    rows_a = [json.loads(ln) for ln in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(ln) for ln in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["sft/loss"] for r in rows_a] == [r["sft/loss"] for r in rows_b]


def test_step_gradient_does_not_depend_on_the_micro_batch_split(tmp_path: Path, tiny_model_dir) -> None:
    """A step's conversations are sorted by length and split into micro-batches: one forward of 3 or three of 1
    train the same step (the loss is normalised by the step's token count)."""
    from safetensors.torch import load_file

    from mmsearch_r1.cli import main

    finals = []
    for mb in (3, 1):
        (tmp_path / str(mb)).mkdir()
        args = _small_sft_args(tmp_path / str(mb), tiny_model_dir, 2)
        args = [a for a in args if not a.startswith("sft.micro_batch_size")] + [f"sft.micro_batch_size={mb}"]
        assert main(["sft", "--no-progress", *args]) == 0
        finals.append(load_file(str(tmp_path / str(mb) / "run" / "final" / "model.safetensors")))
    start = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    a, b = finals
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    assert any(not torch.allclose(a[k], start[k], atol=1e-4) for k in a)  # the steps did train


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_dir):
    from mmsearch_r1.cli import main

    tmp = tmp_path_factory.mktemp("sft")
    convs = [build_conversation(sample(0), [(scripts()["q0"][0], None)], protocol=ProtocolConfig())]
    convs += conversations(ProtocolConfig())[1:2]
    convs.append(
        build_conversation(
            sample(3),
            [
                ("<reason>I do not know it.</reason><search><img></search>", thumb_result(3)),
                ("<reason>The results name it.</reason><answer>Lima</answer>", None),
            ],
            protocol=ProtocolConfig(),
        )
    )
    convs.append(
        build_conversation(
            sample(2),
            [("<reason>I know this place.</reason><answer>Oslo</answer>", None)],
            protocol=ProtocolConfig(),
        )
    )
    write_conversations(tmp / "conv.jsonl", convs)
    cfg = tmp / "sft.yaml"
    cfg.write_text(
        f"model:\n  path: {tiny_model_dir}\n"
        f"sft:\n  train_files: [{tmp / 'conv.jsonl'}]\n  run_dir: {tmp / 'run'}\n"
        "  max_steps: 60\n  batch_size: 4\n  micro_batch_size: 4\n  lr: 5.0e-3\n  save_every: 20\n"
        "optim:\n  schedule: cosine\n  warmup_steps: 5\n  min_lr_ratio: 0.1\ntrainer:\n  keep_last: 2\n"
    )
    assert main(["sft", str(cfg), "sft.log_every=1"]) == 0
    return tmp / "run"


def test_sft_drives_loss_near_zero_and_writes_the_run_dir(sft_run: Path) -> None:
    rows = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 61))
    for key in ("sft/loss", "sft/tokens", "sft/lr", "sft/grad_norm", "sft/seq_tokens", "perf/tokens_per_s"):
        assert all(key in r for r in rows), key
    assert rows[0]["sft/loss"] > 3.0
    assert rows[-1]["sft/loss"] < 0.1
    assert rows[5]["sft/lr"] == pytest.approx(5e-3)  # after the 5 warm-up steps, the full lr
    assert sorted(p.name for p in (sft_run / "checkpoints").iterdir()) == ["step_000040", "step_000060"]
    assert (sft_run / "checkpoints" / "step_000060" / "state.pt").is_file()
    assert (sft_run / "config.yaml").is_file()


def greedy_rollouts(model_dir: Path) -> list:
    from mmsearch_r1.rollout.hf_engine import HFEngine

    model, r = load_model(model_dir), load_processor(model_dir)
    rollout = RolloutConfig(n=1, max_new_tokens_per_turn=48, max_response_tokens=1024)
    return run_rollouts(
        [sample(i) for i in range(4)],
        engine=HFEngine(model, r),
        renderer=r,
        tools=tools(),
        protocol=ProtocolConfig(),
        rollout=rollout,
        params=sampling_params(rollout, greedy=True),
    )


def test_sft_model_emits_the_protocol_greedily(sft_run: Path, tiny_model_dir) -> None:
    before = greedy_rollouts(tiny_model_dir)
    assert not any(t.assistant_texts[0].startswith("<reason>") for t in before)  # the random model does not
    trajs = greedy_rollouts(sft_run / "final")  # the exported HF directory loads with the model layer
    for t in trajs:
        first = t.assistant_texts[0]
        assert first.startswith("<reason>"), first
        assert t.turns[0].action.kind in ("answer", "image_search"), first
