"""Evaluation, tuning and the pipeline: the CLI's own commands (same flags, same checks,
same files) run in this process, and what they wrote read back into objects with numpy
fields and ``to_dict()``."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import numpy as np

from . import _pinpoint
from ._analyses import PathLike, PathPatchingResult, _call, _heads, _Tmp
from ._model import Model


def _flags(kw: dict) -> list:
    """Keywords as CLI flags: ``top_k=8`` -> ``--top-k 8``; True -> ``--flag``; False and
    None are left out; a list repeats the flag."""
    out = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if v is None or v is False:
            continue
        if v is True:
            out.append(flag)
        elif isinstance(v, (list, tuple)):
            for x in v:
                out += [flag, os.fspath(x) if isinstance(x, os.PathLike) else str(x)]
        else:
            out += [flag, os.fspath(v) if isinstance(v, os.PathLike) else str(v)]
    return out


def _model_flags(model) -> list:
    if model is None:
        return []
    if isinstance(model, Model):
        return ["--model", model.path]
    return ["--model", os.fspath(model)]


class EvalResult:
    """``pinpoint eval``'s results: ``metrics`` (per set: all, mc, short), ``outcomes``
    (one dict per question) with numpy columns ``first_correct``, ``final_correct``,
    ``changed``, ``apologized`` (bool), and ``out`` (the folder).

    Example:
        >>> r = pinpoint.evaluate(model, questions="q.jsonl", mmlu=0, short=0)
        >>> r.first_correct.mean()
        0.5
    """

    def __init__(self, out: str):
        self.out = out
        with open(os.path.join(out, "metrics.json")) as f:
            self.metrics = json.load(f)
        with open(os.path.join(out, "outcomes.jsonl")) as f:
            self.outcomes = [json.loads(l) for l in f if l.strip()]
        for col in ("first_correct", "final_correct", "changed", "apologized"):
            setattr(self, col, np.asarray([o[col] for o in self.outcomes], dtype=bool))

    def to_dict(self) -> dict:
        """Plain Python.

        Example:
            >>> r.to_dict()["metrics"]["all"]["first_accuracy"]
            {...}
        """
        return {"out": self.out, "metrics": self.metrics, "outcomes": self.outcomes}


def evaluate(model: Model, questions=None, out: Optional[PathLike] = None, **flags) -> EvalResult:
    """The two-turn "are you sure?" evaluation, run as ``pinpoint eval`` on the model's
    folder. ``questions``: JSONL path(s) or a list of dicts (``{"question", "choices",
    "answer"}`` or ``{"question", "answers"}``); ``out``: the output folder (default: a
    temporary one); other keywords are the CLI's flags (``mmlu=0``, ``short=0``,
    ``batch=16``, ``all_challenges=True`` ...).

    Example:
        >>> r = pinpoint.evaluate(model, questions=[{"question": "2+2?", "answers": ["4"]}],
        ...                       mmlu=0, short=0)
        >>> r.metrics["all"]["first_accuracy"]
    """
    tmp = _Tmp()
    qs = []
    if questions is not None:
        if isinstance(questions, (str, os.PathLike)):
            qs = [os.fspath(questions)]
        elif questions and isinstance(questions[0], dict):
            qs = [tmp.jsonl(list(questions), "questions.jsonl")]
        else:
            qs = [os.fspath(q) for q in questions]
    if out is None:
        tmp_out = tempfile.mkdtemp(prefix="pinpoint-eval-")
        out = tmp_out
    args = _model_flags(model) + ["--out", os.fspath(out)] + _flags({"questions": qs, **flags})
    _call(_pinpoint.evaluate, args)
    return EvalResult(os.fspath(out))


class TuneResult:
    """``pinpoint tune``'s result: ``out`` (the tuned model's folder), ``summary``
    (tune_summary.json), ``loss`` (numpy, one value per step), ``heads`` (the tuned heads'
    labels); :meth:`load` loads the tuned model.

    Example:
        >>> t = pinpoint.tune(model, heads=r, top_k=8, data="train.jsonl", out="tuned")
        >>> t.loss[-1] < t.loss[0]
        True
    """

    def __init__(self, out: str, device: str):
        self.out = out
        self.device = device
        with open(os.path.join(out, "tune_summary.json")) as f:
            self.summary = json.load(f)
        hist = self.summary.get("history") or []
        self.loss = np.asarray([h["loss"] for h in hist], dtype=np.float64)
        self.heads = [f"L{h['layer']}H{h['head']}" for h in self.summary.get("heads") or []]

    def load(self) -> Model:
        """The tuned model.

        Example:
            >>> tuned = t.load()
        """
        return Model.load(self.out, self.device)

    def to_dict(self) -> dict:
        """Plain Python.

        Example:
            >>> t.to_dict()["heads"]
            ['L12H3', ...]
        """
        return {"out": self.out, "summary": self.summary, "loss": self.loss.tolist(),
                "heads": self.heads}


def tune(model: Model, heads=None, data=None, out: Optional[PathLike] = None, top_k=None,
         **flags) -> TuneResult:
    """Supervised pinpoint tuning, run as ``pinpoint tune`` on the model's folder (and its
    device): only the chosen heads' q/k/v/o slices train. ``heads``: a heads.json path
    (with ``top_k``), a list of labels, or a :class:`PathPatchingResult` (its first
    ``top_k``); ``data``: training JSONL; ``out``: the tuned model's folder. Other
    keywords are the CLI's flags (``steps``, ``lr``, ``batch``, ``mode`` ...).

    Example:
        >>> t = pinpoint.tune(model, heads="diagnosis/heads.json", top_k=8,
        ...                   data="train.jsonl", out="tuned", steps=48)
    """
    if out is None:
        raise ValueError("tune needs out= (the folder for the tuned model)")
    hj, hl = _heads(heads)
    if isinstance(heads, PathPatchingResult) and top_k is not None:
        hl = ",".join(heads.top(int(top_k)))
        top_k = None
    args = _model_flags(model) + _flags(
        {"heads": hj, "heads_list": hl, "top_k": top_k, "data": data, "out": out, **flags}
    )
    if isinstance(model, Model) and model.device == "cuda":
        args += ["--device", "cuda"]
    _call(_pinpoint.tune, args)
    return TuneResult(os.fspath(out), getattr(model, "device", "cpu"))


class PipelineResult:
    """``pinpoint pipeline``'s result: ``out``, ``report`` (report.json), ``stages``
    (stages.json).

    Example:
        >>> p = pinpoint.pipeline(out="run1")
        >>> sorted(p.report)[:2]
    """

    def __init__(self, out: str):
        self.out = out
        self.report = _read_json(os.path.join(out, "report.json"))
        self.stages = _read_json(os.path.join(out, "stages.json"))

    def to_dict(self) -> dict:
        """Plain Python.

        Example:
            >>> p.to_dict()["out"]
            'run1'
        """
        return {"out": self.out, "report": self.report, "stages": self.stages}


def _read_json(p: str) -> Any:
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def pipeline(out: PathLike, model=None, **flags) -> PipelineResult:
    """The whole method (diagnose, data, tune, evaluate, KL, knockout, report), run as
    ``pinpoint pipeline``; resumable under ``out``. ``model``: a :class:`Model`, a folder,
    or None (the default model); other keywords are the CLI's flags (``k="4,8"``,
    ``steps``, ``stop_after="diagnose"`` ...).

    Example:
        >>> p = pinpoint.pipeline(out="run1", stop_after="diagnose", pairs=4)
    """
    args = _model_flags(model) + ["--out", os.fspath(out)] + _flags(flags)
    if isinstance(model, Model) and model.device == "cuda":
        args += ["--device", "cuda"]
    _call(_pinpoint.pipeline, args)
    return PipelineResult(os.fspath(out))
