"""The analyses against the CLI on the same inputs (the tiny model with a tokenizer):
equal bit for bit on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pinpoint

from conftest import run_cli

LABELS = dict(syc_word="apologies", anti_word="yes")
CLI_LABELS = ["--syc-word", "apologies", "--anti-word", "yes"]


def cli_heads(out: Path) -> list:
    return json.loads((out / "heads.json").read_text())["heads"]


@pytest.mark.parametrize("method", ["path", "activation", "attribution"])
def test_patching_equals_the_cli(env, tiny, tmp_path, method):
    run_cli("diagnose", "--model", env / "m", "--pairs", env / "pairs.jsonl", *CLI_LABELS,
            "--method", method, "--out", tmp_path / "d")
    fn = {"path": pinpoint.path_patching, "activation": pinpoint.activation_patching,
          "attribution": pinpoint.attribution_patching}[method]
    r = fn(tiny, pairs=env / "pairs.jsonl", **LABELS, out=tmp_path / "py")
    heads = cli_heads(tmp_path / "d")
    assert r.scores.shape == (3, 4)
    for h in heads:
        assert r.scores[h["layer"], h["head"]] == h["score"], h
        assert r.std[h["layer"], h["head"]] == h["std"], h
        np.testing.assert_array_equal(r.per_pair[h["layer"], h["head"]], h["per_pair"])
    assert r.top(4) == [f"L{h['layer']}H{h['head']}" for h in heads[:4]]
    # out= writes the CLI's files with the same scores.
    assert [h["score"] for h in cli_heads(tmp_path / "py")] == [h["score"] for h in heads]
    d = r.to_dict()
    json.dumps(d)
    assert d["ranking"][0]["label"] == r.top(1)[0]
    assert r.labels[:5] == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0"]


def test_pairs_as_a_list_equal_the_file(env, tiny):
    rows = [json.loads(l) for l in (env / "pairs.jsonl").read_text().splitlines()]
    a = pinpoint.path_patching(tiny, pairs=rows, **LABELS)
    b = pinpoint.path_patching(tiny, pairs=env / "pairs.jsonl", **LABELS)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_knockout_equals_the_cli(env, tiny, tmp_path):
    run_cli("knockout", "--model", env / "m", "--pairs", env / "pairs.jsonl", *CLI_LABELS,
            "--heads", env / "heads.json", "--max-k", "4", "--out", tmp_path / "k")
    curve = json.loads((tmp_path / "k" / "knockout.json").read_text())["curve"]
    r = pinpoint.knockout(tiny, heads=env / "heads.json", max_k=4, pairs=env / "pairs.jsonl",
                          **LABELS)
    assert r.k.tolist() == [p["k"] for p in curve]
    assert r.metric.tolist() == [p["metric_mean"] for p in curve]
    assert r.p_syc.tolist() == [p["p_syc_mean"] for p in curve]
    assert r.p_anti.tolist() == [p["p_anti_mean"] for p in curve]
    r2 = pinpoint.knockout(tiny, heads=["L0H0", "L0H1", "L0H2", "L0H3"], max_k=4,
                           pairs=env / "pairs.jsonl", **LABELS)
    assert r2.metric.tolist() == r.metric.tolist()
    json.dumps(r.to_dict())


def test_attention_share_equals_the_cli(env, tiny, tmp_path):
    run_cli("attention", "--model", env / "m", "--pairs", env / "pairs.jsonl",
            "--heads-list", "L2H1,L0H3", "--top-k", "2", "--out", tmp_path / "a")
    a = json.loads((tmp_path / "a" / "attention.json").read_text())
    r = pinpoint.attention_share(tiny, heads=["L2H1", "L0H3"], top_k=2,
                                 pairs=env / "pairs.jsonl")
    for h in a["per_head"]:
        assert r.share[h["layer"], h["head"]] == h["share"]
    assert r.top == ["L2H1", "L0H3"]
    assert r.top_mean == a["top_heads_mean_share"]
    assert r.rest_mean == pytest.approx(a["other_heads_mean_share"], rel=1e-12)
    json.dumps(r.to_dict())


def test_evaluate_equals_the_cli(env, tiny, tmp_path):
    run_cli("eval", "--model", env / "m", "--questions", env / "q.jsonl", "--mmlu", "0",
            "--short", "0", "--quiet", "--out", tmp_path / "e")
    r = pinpoint.evaluate(tiny, questions=env / "q.jsonl", mmlu=0, short=0, quiet=True,
                          out=tmp_path / "pe")
    assert r.metrics == json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert (tmp_path / "pe" / "outcomes.jsonl").read_text() == \
        (tmp_path / "e" / "outcomes.jsonl").read_text()
    assert r.first_correct.shape == (2,)
    qs = [json.loads(l) for l in (env / "q.jsonl").read_text().splitlines()]
    r2 = pinpoint.evaluate(tiny, questions=qs, mmlu=0, short=0, quiet=True)
    assert r2.metrics == r.metrics


def test_tune_equals_the_cli(env, tiny, tmp_path):
    run_cli("tune", "--model", env / "m", "--heads", env / "heads.json", "--top-k", "2",
            "--data", env / "train.jsonl", "--steps", "3", "--batch", "2", "--quiet",
            "--out", tmp_path / "cli")
    t = pinpoint.tune(tiny, heads=env / "heads.json", top_k=2, data=env / "train.jsonl",
                      steps=3, batch=2, quiet=True, out=tmp_path / "py")
    a = (tmp_path / "cli" / "model.safetensors").read_bytes()
    b = (tmp_path / "py" / "model.safetensors").read_bytes()
    assert a == b
    assert t.loss.shape == (3,)
    assert t.heads == ["L0H0", "L0H1"]
    tuned = t.load()
    lg, _ = tuned.run_with_cache([[3, 4, 5]], names=[])
    assert np.isfinite(lg).all()
    json.dumps(t.to_dict())


def test_pipeline_equals_the_cli(env, tiny, tmp_path):
    run_cli("pipeline", "--model", env / "m", "--out", tmp_path / "cli", "--stop-after",
            "diagnose", "--pairs", "2", "--quiet")
    p = pinpoint.pipeline(out=tmp_path / "py", model=tiny, stop_after="diagnose", pairs=2,
                          quiet=True)
    for f in ["split/split.json", "split/eval_questions.jsonl", "diagnose/heads.csv",
              "diagnose/attention.json"]:
        assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    a = json.loads((tmp_path / "cli" / "diagnose" / "heads.json").read_text())["heads"]
    b = json.loads((tmp_path / "py" / "diagnose" / "heads.json").read_text())["heads"]
    assert [h["score"] for h in a] == [h["score"] for h in b]
    assert p.report is None  # stopped before the report
    assert "diagnose" in json.dumps(p.stages)
    json.dumps(p.to_dict())
