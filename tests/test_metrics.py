"""Step metrics from trajectory rows: means, per-source accuracy and search ratio, searched vs direct accuracy."""

from __future__ import annotations

import pytest

from mmsearch_r1.rl.metrics import rollout_metrics


def _row(source, acc, n_image=0, n_text=0, reward=None, finish="answer"):
    return {
        "source": source,
        "reward": acc if reward is None else reward,
        "acc": acc,
        "format": 1.0,
        "penalty": 0.9 if n_image + n_text else 1.0,
        "n_image": n_image,
        "n_text": n_text,
        "err_image": 0,
        "err_text": 0,
        "turns": 1 + n_image + n_text,
        "assistant_tokens": 10,
        "response_tokens": 20,
        "finish": finish,
    }


def test_rollout_metrics_split_by_source_and_by_search():
    rows = [
        _row("head", 1.0),  # direct, right
        _row("head", 0.0, n_image=1),  # searched, wrong
        _row("tail", 1.0, n_image=1, n_text=1),  # searched, right
        _row("tail", 1.0, n_image=1),  # searched, right
    ]
    m = rollout_metrics(rows)
    assert m["acc/head"] == 0.5 and m["acc/tail"] == 1.0
    assert m["search/ratio_any/head"] == 0.5 and m["search/ratio_any/tail"] == 1.0
    assert m["search/ratio_any"] == 0.75
    assert m["search/ratio_both"] == 0.25 and m["search/ratio_image_only"] == 0.5
    assert m["acc/searched"] == pytest.approx(2 / 3) and m["acc/direct"] == 1.0
    assert m["search/per_traj"] == 1.0
    assert m["rollout/finish_answer"] == 1.0 and m["rollout/n_trajectories"] == 4


def test_rollout_metrics_without_direct_answers():
    m = rollout_metrics([_row("a", 1.0, n_text=1)])
    assert m["acc/direct"] == 0.0 and m["acc/searched"] == 1.0 and m["search/ratio_text_only"] == 1.0
