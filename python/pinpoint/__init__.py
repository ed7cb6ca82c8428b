"""pinpoint from Python notebooks: the engine that finds and fine-tunes the attention heads
that make chat models sycophantic, with TransformerLens' names and shapes.

Example:
    >>> import pinpoint
    >>> model = pinpoint.Model.load()                       # SmolLM2-135M-Instruct
    >>> logits, cache = model.run_with_cache("Are you sure?")
    >>> cache["blocks.3.attn.hook_z"].shape                 # [batch, pos, head, d_head]
    (1, 4, 9, 64)
    >>> r = pinpoint.path_patching(model, n=16)             # scores [n_layers, n_heads]
    >>> r.top(5)
"""

from . import _pinpoint
from ._analyses import (
    AttentionShareResult,
    KnockoutResult,
    PathPatchingResult,
    activation_patching,
    attention_share,
    attribution_patching,
    knockout,
    path_patching,
)
from ._commands import EvalResult, PipelineResult, TuneResult, evaluate, pipeline, tune
from ._model import Config, Hook, Model, capture, mean_ablate, patch

__all__ = [
    "Model",
    "Config",
    "Hook",
    "patch",
    "mean_ablate",
    "capture",
    "path_patching",
    "activation_patching",
    "attribution_patching",
    "knockout",
    "attention_share",
    "evaluate",
    "tune",
    "pipeline",
    "PathPatchingResult",
    "KnockoutResult",
    "AttentionShareResult",
    "EvalResult",
    "TuneResult",
    "PipelineResult",
]
