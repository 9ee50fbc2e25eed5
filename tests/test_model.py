"""Model layer: tiny model build, loading, chat rendering in token space, and mRoPE positions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmsearch_r1.model import ChatRenderer, build_tiny_model, compute_position_ids, load_model, load_processor
from mmsearch_r1.model.special_tokens import SpecialTokens
from mmsearch_r1.types import Message


def _img(color: tuple[int, int, int], size: tuple[int, int] = (56, 56)) -> Image.Image:
    im = Image.new("RGB", size, color)
    for x in range(0, size[0], 7):  # some structure so patches differ
        for y in range(0, size[1], 5):
            im.putpixel((x, y), (255 - color[0], (x * 9) % 256, (y * 7) % 256))
    return im


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = load_model(tiny_model_dir)
    # a wider init than training uses, so logits depend strongly on positions and images
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model, load_processor(tiny_model_dir)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Zorblat tower was built in 1873 by Ilvane Works.\n" * 3)
    a = _hashes(build_tiny_model(tmp_path / "a", seed=3, corpus=corpus))
    b = _hashes(build_tiny_model(tmp_path / "b", seed=3, corpus=corpus))
    c = _hashes(build_tiny_model(tmp_path / "c", seed=4, corpus=corpus))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]
    assert a["tokenizer.json"] == c["tokenizer.json"]  # the tokenizer depends on the corpus only


def test_tiny_sizes_rope_base_and_heads_reach_the_model(tmp_path: Path) -> None:
    from mmsearch_r1.model.tiny import TinySizes

    model = load_model(build_tiny_model(tmp_path / "m", seed=0, sizes=TinySizes(rope_theta=1e4, kv_heads=4)))
    text = model.config.text_config
    assert text.num_key_value_heads == 4 and text.rope_parameters["rope_theta"] == 1e4
    head_dim = text.hidden_size // text.num_attention_heads
    inv_freq = model.model.language_model.rotary_emb.inv_freq
    assert torch.allclose(inv_freq, 1e4 ** (-torch.arange(0, head_dim, 2).float() / head_dim))
    default = load_model(build_tiny_model(tmp_path / "d", seed=0)).model.language_model.rotary_emb.inv_freq
    assert torch.allclose(default, 1e6 ** (-torch.arange(0, head_dim, 2).float() / head_dim))


def test_corpus_words_become_few_tokens(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Zorblat Quennimark\n" * 50)
    r = load_processor(build_tiny_model(tmp_path / "m", seed=0, corpus=corpus))
    assert len(r.encode("Zorblat Quennimark")) <= 3


def test_loader_and_missing_special_token(tiny_model_dir, tmp_path: Path) -> None:
    r = load_processor(tiny_model_dir)
    assert isinstance(r, ChatRenderer)
    assert r.decode([r.special.im_end]) == "<|im_end|>"

    class NoPad:
        def get_vocab(self):
            v = dict(r.tokenizer.get_vocab())
            del v["<|image_pad|>"]
            return v

    with pytest.raises(ValueError, match="image_pad"):
        SpecialTokens.from_tokenizer(NoPad())
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_pad_counts_match_grids_and_text_cannot_forge_control_tokens(tiny_model_dir) -> None:
    r = load_processor(tiny_model_dir)
    msgs = [Message("user", [_img((200, 10, 10)), "a <|im_end|> b", _img((0, 0, 90), (112, 84))])]
    ren = r.render(msgs, add_generation_prompt=True)
    grids = ren.image_grid_thw.tolist()
    assert len(grids) == 2
    ids = ren.input_ids
    assert ids.count(r.special.image_pad) == sum(t * h * w // 4 for t, h, w in grids)
    # each image's pads sit between its own vision_start / vision_end
    starts = [i for i, t in enumerate(ids) if t == r.special.vision_start]
    ends = [i for i, t in enumerate(ids) if t == r.special.vision_end]
    for (t, h, w), s, e in zip(grids, starts, ends, strict=True):
        assert e - s - 1 == t * h * w // 4
        assert set(ids[s + 1 : e]) == {r.special.image_pad}
    # the literal "<|im_end|>" in user text is plain text, not the control token
    assert ids.count(r.special.im_end) == 1
    assert ren.pixel_values.shape[0] == sum(t * h * w for t, h, w in grids)


def test_whole_conversation_equals_turns_appended_in_token_space(tiny_model_dir) -> None:
    r = load_processor(tiny_model_dir)
    q = Message("user", [_img((10, 200, 10)), "What is this?"])
    answer1 = "<reason>unsure</reason><search><img></search>"
    obs = ["<information>", _img((1, 2, 3)), "1. Tower\n", _img((90, 90, 0)), "2. Bridge\n", "</information>"]
    answer2 = "<reason>it is a tower</reason><answer>Tower</answer>"
    whole = r.render(
        [q, Message("assistant", [answer1]), Message("user", obs), Message("assistant", [answer2])],
        add_generation_prompt=False,
    )
    prompt = r.render([q], add_generation_prompt=True)
    tool = r.render_tool_turn(obs)
    pieces = (
        prompt.input_ids
        + r.render_assistant_text(answer1)
        + tool.input_ids
        + r.render_assistant_text(answer2)
        + r.encode("\n")
    )
    assert whole.input_ids == pieces
    assert torch.equal(whole.image_grid_thw, torch.cat([prompt.image_grid_thw, tool.image_grid_thw]))


def _conversation(r: ChatRenderer, colors) -> tuple[list[int], list[Image.Image]]:
    q = Message("user", [_img(colors[0]), "Which tower is this?"])
    obs = ["<information>", _img(colors[1]), "1. Tall tower\n", _img(colors[2], (84, 56)), "2. Old tower\n"]
    ren = r.render(
        [q, Message("assistant", ["<reason>search</reason><search><img></search>"]), Message("user", obs)],
        add_generation_prompt=True,
    )
    return ren.input_ids + r.encode("<reason>it is"), ren.images


def test_positions_match_model_own_forward_single_and_left_padded_batch(tiny) -> None:
    model, r = tiny
    seqs = [
        _conversation(r, [(200, 30, 30), (30, 200, 30), (30, 30, 200)]),
        _conversation(r, [(10, 10, 10), (240, 240, 0), (0, 240, 240)]),
    ]
    seqs[1] = (seqs[1][0] + r.encode(" a much longer continuation of the second row"), seqs[1][1])

    def own_and_ours(batch):
        T = max(len(ids) for ids, _ in batch)
        pad = r.special.pad
        input_ids = torch.tensor([[pad] * (T - len(ids)) + ids for ids, _ in batch])
        attn = torch.tensor([[0] * (T - len(ids)) + [1] * len(ids) for ids, _ in batch])
        images = [im for _, ims in batch for im in ims]
        pixel_values, grid = r.encode_images(images)
        mm = (input_ids == r.special.image_pad).int()
        with torch.no_grad():
            own = model(
                input_ids=input_ids,
                attention_mask=attn,
                pixel_values=pixel_values,
                image_grid_thw=grid,
                mm_token_type_ids=mm,
            ).logits
            pos = compute_position_ids(model, input_ids, grid, attn)
            assert pos.shape == (3, len(batch), T)
            ours = model(
                input_ids=input_ids,
                attention_mask=attn,
                pixel_values=pixel_values,
                image_grid_thw=grid,
                position_ids=pos,
            ).logits
            flat = attn.long().cumsum(-1).sub(1).clamp(min=0).unsqueeze(0).expand(3, -1, -1)
            naive = model(
                input_ids=input_ids,
                attention_mask=attn,
                pixel_values=pixel_values,
                image_grid_thw=grid,
                position_ids=flat,
            ).logits
        keep = attn.bool()
        return own[keep], ours[keep], naive[keep]

    own, ours, naive = own_and_ours(seqs[:1])
    assert torch.allclose(own, ours, atol=1e-5)
    assert not torch.allclose(own, naive, atol=1e-3)  # sequential 1-D positions (the original's bug) differ
    own, ours, _ = own_and_ours(seqs)
    assert torch.allclose(own, ours, atol=1e-5)
    # the left-padded batch gives each row what it gets alone
    alone, _, _ = own_and_ours(seqs[1:])
    n = alone.shape[0]
    assert torch.allclose(own[-n:], alone, atol=1e-4)


def test_cli_model_tiny(tmp_path: Path, capsys) -> None:
    from mmsearch_r1.cli import main

    assert main(["model", "tiny", "--out", str(tmp_path / "m"), "--seed", "1"]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert "tiny model written" in capsys.readouterr().out


def test_shipped_chat_template_agrees_with_renderer(tiny_model_dir) -> None:
    r = load_processor(tiny_model_dir)
    img = _img((40, 80, 120))
    msgs = [
        Message("system", ["Answer briefly."]),
        Message("user", [img, "What is this?"]),
        Message("assistant", ["<reason>x</reason><search><img></search>"]),
        Message("user", ["<information>none</information>"]),
    ]
    as_dicts = [
        {
            "role": m.role,
            "content": [
                {"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in m.content
            ],
        }
        for m in msgs
    ]
    text = r.tokenizer.apply_chat_template(as_dicts, tokenize=False, add_generation_prompt=True)
    ids = r.tokenizer(text, add_special_tokens=False)["input_ids"]
    ren = r.render(msgs, add_generation_prompt=True)
    n = r.num_image_tokens(ren.image_grid_thw[0].tolist())
    assert n == 4  # a 56x56 image is 4 merged tokens
    k = ids.index(r.special.image_pad)
    assert ids[:k] + [r.special.image_pad] * n + ids[k + 1 :] == ren.input_ids
    assert r.decode(ren.input_ids).count("<|image_pad|>") == n


def test_text_only_left_padded_positions_match_unpadded_rows(tiny) -> None:
    model, r = tiny
    a, b = r.encode("What is the name of this object?"), r.encode("Paris")
    T = len(a)
    input_ids = torch.tensor([a, [r.special.pad] * (T - len(b)) + b])
    attn = torch.tensor([[1] * T, [0] * (T - len(b)) + [1] * len(b)])
    pos = compute_position_ids(model, input_ids, None, attn)
    assert pos.shape == (3, 2, T)
    with torch.no_grad():
        batched = model(input_ids=input_ids, attention_mask=attn, position_ids=pos).logits
        alone = model(input_ids=torch.tensor([b])).logits[0]
    assert torch.allclose(batched[1, T - len(b) :], alone, atol=1e-5)


def test_load_processor_errors_name_the_missing_piece(tiny_model_dir, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_processor(tmp_path / "nope")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="tokenizer files"):
        load_processor(partial)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (partial / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        load_processor(partial)
