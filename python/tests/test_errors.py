"""Bad inputs give the named exception with the engine's message, and the interpreter
(and the model) live on; Ctrl-C stops a long call as KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pinpoint

from conftest import FIXTURES, ROOT


def test_missing_folder_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        pinpoint.Model.load(tmp_path / "nope")


def test_a_file_that_is_not_a_model(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(ValueError, match="is a file; give a model folder"):
        pinpoint.Model.load(f)
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        pinpoint.Model.load(d)
    e = tmp_path / "e"
    e.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        pinpoint.Model.load(e)


def test_bad_device(tmp_path):
    with pytest.raises(ValueError, match="device"):
        pinpoint.Model.load(FIXTURES / "tiny-llama", device="tpu")


def test_bad_calls_raise_and_the_model_lives(tiny):
    with pytest.raises(ValueError, match="unknown hook point"):
        tiny.run_with_cache([[1, 2]], names=["blocks.0.attn.hook_query"])
    with pytest.raises(ValueError, match="3 layers"):
        tiny.run_with_cache([[1, 2]], names=["blocks.7.attn.hook_z"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny.run_with_cache([[1, 99999]], names=[])
    with pytest.raises(ValueError, match="empty"):
        tiny.run_with_cache([[1, 2], []], names=[])
    with pytest.raises(ValueError, match="non-negative"):
        tiny.run_with_cache([[1, -2]], names=[])
    with pytest.raises(ValueError, match="shape"):
        tiny.run_with_hooks([[1, 2, 3]], fwd_hooks=[
            ("blocks.0.attn.hook_z", pinpoint.patch(np.zeros(5), head=1))])
    with pytest.raises(ValueError, match="position 9"):
        tiny.run_with_hooks([[1, 2, 3]], fwd_hooks=[
            ("blocks.0.attn.hook_z", pinpoint.patch(np.zeros(16), head=1, pos=9))])
    with pytest.raises(ValueError, match="expected"):
        tiny.run_with_hooks([[1, 2, 3]], fwd_hooks=[
            ("blocks.0.hook_resid_pre", lambda a, h: a[:, :1])])
    with pytest.raises(ValueError, match="not be edited|cannot|can be cached"):
        tiny.run_with_hooks([[1, 2, 3]], fwd_hooks=[
            ("blocks.0.attn.hook_pattern", lambda a, h: a)])

    class Mine(Exception):
        pass

    def boom(a, h):
        raise Mine("from the hook")

    with pytest.raises(Mine, match="from the hook"):
        tiny.run_with_hooks([[1, 2, 3]], fwd_hooks=[("blocks.1.hook_mlp_out", boom)])
    with pytest.raises(ValueError, match="tokens of shape"):
        tiny.run_with_cache(np.zeros((1, 2, 3), dtype=np.int64))
    # Still works after all of that.
    lg, _ = tiny.run_with_cache([[1, 2, 3]], names=[])
    assert np.isfinite(lg).all()


def test_analysis_inputs_carry_the_cli_messages(env, tiny):
    with pytest.raises(FileNotFoundError, match="--pairs file"):
        pinpoint.path_patching(tiny, pairs=env / "missing.jsonl")
    with pytest.raises(ValueError, match="--n 0: must be at least 1"):
        pinpoint.path_patching(tiny, n=0)
    with pytest.raises(ValueError, match="metric"):
        pinpoint.path_patching(tiny, pairs=env / "pairs.jsonl", metric="nope")
    with pytest.raises(ValueError, match="another model"):
        bad = env / "bad_heads.json"
        bad.write_text((env / "heads.json").read_text().replace('"num_hidden_layers": 3',
                                                                '"num_hidden_layers": 5'))
        pinpoint.knockout(tiny, heads=bad, pairs=env / "pairs.jsonl", syc_word="apologies",
                          anti_word="yes")
    with pytest.raises(ValueError, match="--steps"):
        pinpoint.tune(tiny, heads=["L0H1"], data=env / "train.jsonl", out=env / "t0", steps=0)


def test_ctrl_c_interrupts_a_long_call(env):
    """A SIGINT during a long generation comes back as KeyboardInterrupt soon after."""
    code = textwrap.dedent(f"""
        import time, pinpoint
        m = pinpoint.Model.load({str(env / "m")!r})
        print("ready", flush=True)
        t = time.time()
        try:
            m.generate([[3, 4, 5]], max_new_tokens=200_000, stop_at_eos=False)
            print("finished", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PINPOINT_PROGRESS": "0"})
    assert p.stdout.readline().strip() == "ready"
    import time

    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("the interpreter did not stop within 30 s of Ctrl-C")
    assert out.strip() == "interrupted", out
    assert p.returncode == 0
