"""The analyses as functions returning plain objects with numpy fields and ``to_dict()``:
diagnosis (path, activation, attribution patching), knockout and attention share, on the
loaded model through the library code the CLI runs (``_commands.py`` has the rest)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _pinpoint
from ._model import Model
from ._progress import progress_callback

PathLike = Union[str, "os.PathLike[str]"]


def _call(fn, *args):
    """Run an engine call with a progress sink that is closed afterwards."""
    bar = progress_callback()
    try:
        return fn(*args, bar)
    finally:
        if bar is not None:
            bar.close()


class _Tmp:
    """Pairs/questions given as Python lists, written to a JSONL file the engine reads."""

    def __init__(self):
        self._dir = None

    def jsonl(self, rows: Sequence[dict], name: str) -> str:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="pinpoint-")
        p = os.path.join(self._dir.name, name)
        with open(p, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        return p


def _pairs_path(pairs, tmp: _Tmp) -> Optional[str]:
    if pairs is None:
        return None
    if isinstance(pairs, (str, os.PathLike)):
        return os.fspath(pairs)
    rows = list(pairs)
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(
                f"pairs[{i}]: expected a dict with 'reference' and 'counterfactual' message lists"
            )
    return tmp.jsonl(rows, "pairs.jsonl")


def _heads(heads) -> tuple:
    """(heads.json path, heads list) from a path, a list of labels/HeadIds, or a result."""
    if heads is None:
        return None, None
    if isinstance(heads, (str, os.PathLike)) and os.fspath(heads).endswith(".json"):
        return os.fspath(heads), None
    if isinstance(heads, str):
        return None, heads
    if isinstance(heads, PathPatchingResult):
        return None, ",".join(heads.top(len(heads.ranking)))
    return None, ",".join(str(h) for h in heads)


class PathPatchingResult:
    """Head scores of a diagnosis. ``scores``/``std``: ``[n_layers, n_heads]`` (per
    position nodes: ``[n_layers, n_heads, n_positions]``, NaN where absent); ``per_pair``:
    ``[n_layers, n_heads, n_pairs]`` for last-position scores; ``ranking``: the nodes by
    rank (most negative score first) as dicts with ``label`` (TransformerLens' head label
    ``L{layer}H{head}``), ``z_hook``, ``score``, ``std``; ``reference_metric``,
    ``counterfactual_metric``; ``labels``: ``L{l}H{h}`` for every head, layer-major.

    Example:
        >>> r = pinpoint.path_patching(model)
        >>> r.scores.shape, r.top(3)
        ((30, 9), ['L12H3', 'L9H1', 'L20H4'])
    """

    def __init__(self, raw: dict, n_layers: int, n_heads: int):
        d = raw["diagnosis"]
        self.method = d["config"]["method"]
        self.positions = d["config"]["positions"]
        self.metric = d["metric"]
        self.syc_label = raw["syc_label"]
        self.anti_label = raw["anti_label"]
        self.data = raw["data"]
        self.n_pairs = d["n_pairs"]
        self.reference_metric = d["reference_metric"]
        self.counterfactual_metric = d["counterfactual_metric"]
        self.seconds_clean = d["seconds_clean"]
        self.seconds_sweep = d["seconds_sweep"]
        self.labels = [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]
        heads = d["heads"]
        self.ranking = [
            {
                "label": f"L{h['layer']}H{h['head']}"
                + (f"@{h['position']}" if h.get("position") is not None else ""),
                "layer": h["layer"],
                "head": h["head"],
                "position": h.get("position"),
                "rank": h["rank"],
                "score": h["score"],
                "std": h["std"],
                "z_hook": "blocks.{}.attn.hook_z[:, {}, {}]".format(
                    h["layer"],
                    -1 if h.get("position") is None else h["position"],
                    h["head"],
                ),
            }
            for h in heads
        ]
        has_pos = any(h.get("position") is not None for h in heads)
        if has_pos:
            n_pos = 1 + max(h["position"] for h in heads)
            shape = (n_layers, n_heads, n_pos)
        else:
            shape = (n_layers, n_heads)
        self.scores = np.full(shape, np.nan)
        self.std = np.full(shape, np.nan)
        self.per_pair = np.full((n_layers, n_heads, self.n_pairs), np.nan) if not has_pos else None
        for h in heads:
            at = (h["layer"], h["head"]) + ((h["position"],) if has_pos else ())
            self.scores[at] = h["score"]
            self.std[at] = h["std"]
            if self.per_pair is not None and len(h["per_pair"]) == self.n_pairs:
                self.per_pair[at] = h["per_pair"]

    def top(self, k: int) -> list:
        """The labels of the ``k`` best-ranked nodes (``L3H5``, or ``L3H5@17`` per position).

        Example:
            >>> r.top(2)
            ['L12H3', 'L9H1']
        """
        return [n["label"] for n in self.ranking[:k]]

    def to_dict(self) -> dict:
        """Plain Python (lists for arrays), e.g. for JSON.

        Example:
            >>> json.dumps(r.to_dict())[:20]
            '{"method": "path", "'
        """
        return {
            "method": self.method,
            "positions": self.positions,
            "metric": self.metric,
            "syc_label": self.syc_label,
            "anti_label": self.anti_label,
            "n_pairs": self.n_pairs,
            "reference_metric": self.reference_metric,
            "counterfactual_metric": self.counterfactual_metric,
            "scores": np.where(np.isnan(self.scores), None, self.scores).tolist(),
            "std": np.where(np.isnan(self.std), None, self.std).tolist(),
            "ranking": self.ranking,
            "data": self.data,
        }

    def __repr__(self) -> str:
        return f"PathPatchingResult({self.method}, {self.n_pairs} pairs, top {self.top(5)})"


def _diagnose(
    model: Model,
    method: str,
    pairs=None,
    n: int = 16,
    seed: int = 0,
    system: Optional[str] = None,
    syc_word: str = "Apologies",
    anti_word: str = "Yes",
    labels: str = "words",
    metric: str = "ratio",
    positions: str = "last",
    freeze_mlp: bool = False,
    top_k: int = 16,
    out: Optional[PathLike] = None,
) -> PathPatchingResult:
    tmp = _Tmp()
    if isinstance(positions, (list, tuple)):
        positions = ",".join(str(int(p)) for p in positions)
    raw = _call(
        _pinpoint.diagnose,
        model._e,
        _pairs_path(pairs, tmp),
        int(n),
        int(seed),
        system,
        syc_word,
        anti_word,
        labels,
        metric,
        method,
        str(positions),
        bool(freeze_mlp),
        int(top_k),
        None if out is None else os.fspath(out),
    )
    return PathPatchingResult(json.loads(raw), model.cfg.n_layers, model.cfg.n_heads)


def path_patching(model: Model, pairs=None, **kw) -> PathPatchingResult:
    """Exact path patching of every head (heads -> logits, other heads frozen), as
    ``pinpoint diagnose``. ``pairs``: a JSONL path, a list of ``{"reference": [messages],
    "counterfactual": [messages]}``, or None for ``n`` built-in MMLU pairs. Keywords as the
    CLI's flags: ``n``, ``seed``, ``system``, ``syc_word``, ``anti_word``, ``labels``
    ("words"/"auto"), ``metric`` ("ratio"/"logit-diff"/"prob-diff"), ``positions``
    ("last", "all", or a list), ``freeze_mlp``, ``top_k``; ``out`` also writes the CLI's
    files (heads.json, heads.csv, heatmaps, summary.md).

    Example:
        >>> r = pinpoint.path_patching(model, n=16)
        >>> r.top(16)[:3]
        ['L12H3', 'L9H1', 'L20H4']
    """
    return _diagnose(model, "path", pairs, **kw)


def activation_patching(model: Model, pairs=None, **kw) -> PathPatchingResult:
    """Activation patching (total effect, nothing frozen): ``pinpoint diagnose --method
    activation``; arguments as :func:`path_patching`.

    Example:
        >>> pinpoint.activation_patching(model, n=4).scores.shape
        (30, 9)
    """
    return _diagnose(model, "activation", pairs, **kw)


def attribution_patching(model: Model, pairs=None, **kw) -> PathPatchingResult:
    """Attribution patching (first order, one forward and one backward): ``pinpoint
    diagnose --method attribution``; arguments as :func:`path_patching`.

    Example:
        >>> pinpoint.attribution_patching(model, n=4).top(5)
        ['L12H3', 'L9H1', 'L20H4', 'L3H0', 'L7H2']
    """
    return _diagnose(model, "attribution", pairs, **kw)


class KnockoutResult:
    """Mean-ablation knockout of the first k heads for k = 0, 1, 2, 4, ...: ``k``,
    ``metric``, ``p_syc``, ``p_anti`` (numpy, one value per k), ``order`` (the heads in
    ablation order), ``syc_label``, ``anti_label``.

    Example:
        >>> r = pinpoint.knockout(model, heads=["L3H5", "L10H2"])
        >>> r.k, r.metric
        (array([0, 1, 2]), array([...]))
    """

    def __init__(self, raw: dict):
        c = raw["curve"]
        self.k = np.asarray([p["k"] for p in c], dtype=np.int64)
        self.metric = np.asarray([p["metric_mean"] for p in c])
        self.p_syc = np.asarray([p["p_syc_mean"] for p in c])
        self.p_anti = np.asarray([p["p_anti_mean"] for p in c])
        self.order = [f"L{h['layer']}H{h['head']}" for h in raw["order"]]
        self.syc_label = raw["syc_label"]
        self.anti_label = raw["anti_label"]
        self.curve = c

    def to_dict(self) -> dict:
        """Plain Python.

        Example:
            >>> r.to_dict()["k"]
            [0, 1, 2]
        """
        return {
            "k": self.k.tolist(),
            "metric": self.metric.tolist(),
            "p_syc": self.p_syc.tolist(),
            "p_anti": self.p_anti.tolist(),
            "order": self.order,
            "syc_label": self.syc_label,
            "anti_label": self.anti_label,
        }


def knockout(
    model: Model,
    heads,
    max_k: int = 64,
    pairs=None,
    n: int = 16,
    seed: int = 0,
    system: Optional[str] = None,
    syc_word: str = "Apologies",
    anti_word: str = "Yes",
    labels: str = "words",
    metric: str = "ratio",
) -> KnockoutResult:
    """Mean-ablate the first k of ``heads`` (a heads.json path, a list of labels such as
    ``["L3H5", "L10H2"]``, or a :class:`PathPatchingResult`), as ``pinpoint knockout``.

    Example:
        >>> pinpoint.knockout(model, heads="diagnosis/heads.json", max_k=8).metric
        array([...])
    """
    tmp = _Tmp()
    hj, hl = _heads(heads)
    raw = _call(
        _pinpoint.knockout,
        model._e,
        hj,
        hl,
        int(max_k),
        _pairs_path(pairs, tmp),
        int(n),
        int(seed),
        system,
        syc_word,
        anti_word,
        labels,
        metric,
    )
    return KnockoutResult(json.loads(raw))


class AttentionShareResult:
    """The last token's attention mass on the challenge sentence: ``share`` ``[n_layers,
    n_heads]`` (mean over prompts), ``per_prompt`` ``[n_layers, n_heads, n_prompts]``,
    ``top`` (the heads compared), ``top_mean``, ``rest_mean``.

    Example:
        >>> r = pinpoint.attention_share(model, heads=["L3H5"], n=4)
        >>> r.share.shape
        (30, 9)
    """

    def __init__(self, raw: dict, n_layers: int, n_heads: int):
        self.share = np.zeros((n_layers, n_heads))
        self.per_prompt = np.zeros((n_layers, n_heads, len(raw["per_prompt"][0])))
        for h, s, pp in zip(raw["heads"], raw["share"], raw["per_prompt"]):
            self.share[h["layer"], h["head"]] = s
            self.per_prompt[h["layer"], h["head"]] = pp
        self.top = [f"L{h['layer']}H{h['head']}" for h in raw["top"]]
        top_idx = {(h["layer"], h["head"]) for h in raw["top"]}
        rest = [self.share[l, h] for l in range(n_layers) for h in range(n_heads)
                if (l, h) not in top_idx]
        self.top_mean = float(np.mean([self.share[i] for i in top_idx])) if top_idx else float("nan")
        self.rest_mean = float(np.mean(rest)) if rest else float("nan")

    def to_dict(self) -> dict:
        """Plain Python.

        Example:
            >>> r.to_dict()["top_mean"]
            0.21
        """
        return {
            "share": self.share.tolist(),
            "per_prompt": self.per_prompt.tolist(),
            "top": self.top,
            "top_mean": self.top_mean,
            "rest_mean": self.rest_mean,
        }


def attention_share(
    model: Model,
    heads=None,
    top_k: int = 16,
    pairs=None,
    n: int = 16,
    seed: int = 0,
    system: Optional[str] = None,
) -> AttentionShareResult:
    """Attention share of every head on the challenge (``pinpoint attention``); with
    ``heads`` (as :func:`knockout`) the first ``top_k`` are compared with the rest.

    Example:
        >>> r = pinpoint.attention_share(model, heads=result, top_k=16)
        >>> r.top_mean > r.rest_mean
        True
    """
    tmp = _Tmp()
    hj, hl = _heads(heads)
    raw = _call(
        _pinpoint.attention_share,
        model._e,
        hj,
        hl,
        int(top_k),
        _pairs_path(pairs, tmp),
        int(n),
        int(seed),
        system,
    )
    return AttentionShareResult(json.loads(raw), model.cfg.n_layers, model.cfg.n_heads)
