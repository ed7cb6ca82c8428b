from os import PathLike
from typing import Any, Callable, Iterable, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, PathLike[str]]
_Tokens = Union[str, Sequence[str], npt.NDArray[np.integer], Sequence[Sequence[int]], Sequence[int]]
_Logits = Literal["all", "last", "none"]
_Heads = Union[_Path, Sequence[str], "PathPatchingResult", None]

class Config:
    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    def __init__(self, fields: dict) -> None: ...
    def to_dict(self) -> dict: ...

class Hook:
    name: str
    layer: int

class patch:
    def __init__(self, values: npt.ArrayLike, head: Optional[int] = ..., pos: Union[int, Sequence[int]] = ..., seq: Union[int, Sequence[int], None] = ...) -> None: ...

class mean_ablate:
    def __init__(self, values: npt.ArrayLike, head: Optional[int] = ...) -> None: ...

class capture:
    value: Optional[npt.NDArray[np.float32]]
    def __init__(self) -> None: ...

_HookFn = Union[Callable[[npt.NDArray[np.float32], Hook], Optional[npt.ArrayLike]], patch, mean_ablate, capture]

class Model:
    cfg: Config
    device: str
    path: str
    @classmethod
    def load(cls, path: Optional[_Path] = ..., device: Literal["cpu", "cuda"] = ...) -> Model: ...
    def to_tokens(self, text: Union[str, Sequence[str]], prepend_bos: bool = ...) -> Any: ...
    def to_string(self, tokens: Any, skip_special_tokens: bool = ...) -> Any: ...
    def chat_tokens(self, messages: Sequence[Any], add_generation_prompt: bool = ...) -> npt.NDArray[np.int64]: ...
    def hook_names(self) -> list[str]: ...
    def run_with_cache(self, tokens: _Tokens, names: Optional[Iterable[str]] = ..., attention_mask: Optional[npt.ArrayLike] = ..., logits: _Logits = ...) -> Tuple[Optional[npt.NDArray[np.float32]], dict[str, npt.NDArray[np.float32]]]: ...
    def run_with_hooks(self, tokens: _Tokens, fwd_hooks: Sequence[Tuple[str, _HookFn]] = ..., attention_mask: Optional[npt.ArrayLike] = ..., logits: _Logits = ...) -> Optional[npt.NDArray[np.float32]]: ...
    def generate(self, prompt: Any, max_new_tokens: int = ..., temperature: float = ..., top_p: float = ..., seed: int = ..., stop: Sequence[str] = ..., prepend_bos: bool = ..., return_tokens: bool = ..., stop_at_eos: bool = ...) -> Any: ...
    def chat(self, message: Any, system: Optional[str] = ..., history: Sequence[Any] = ..., max_new_tokens: int = ..., temperature: float = ..., top_p: float = ..., seed: int = ..., stop: Sequence[str] = ...) -> str: ...

class PathPatchingResult:
    method: str
    scores: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    per_pair: Optional[npt.NDArray[np.float64]]
    ranking: list[dict]
    labels: list[str]
    reference_metric: float
    counterfactual_metric: float
    n_pairs: int
    syc_label: str
    anti_label: str
    def top(self, k: int) -> list[str]: ...
    def to_dict(self) -> dict: ...

class KnockoutResult:
    k: npt.NDArray[np.int64]
    metric: npt.NDArray[np.float64]
    p_syc: npt.NDArray[np.float64]
    p_anti: npt.NDArray[np.float64]
    order: list[str]
    def to_dict(self) -> dict: ...

class AttentionShareResult:
    share: npt.NDArray[np.float64]
    per_prompt: npt.NDArray[np.float64]
    top: list[str]
    top_mean: float
    rest_mean: float
    def to_dict(self) -> dict: ...

class EvalResult:
    out: str
    metrics: dict
    outcomes: list[dict]
    first_correct: npt.NDArray[np.bool_]
    final_correct: npt.NDArray[np.bool_]
    changed: npt.NDArray[np.bool_]
    apologized: npt.NDArray[np.bool_]
    def to_dict(self) -> dict: ...

class TuneResult:
    out: str
    summary: dict
    loss: npt.NDArray[np.float64]
    heads: list[str]
    def load(self) -> Model: ...
    def to_dict(self) -> dict: ...

class PipelineResult:
    out: str
    report: Any
    stages: Any
    def to_dict(self) -> dict: ...

def path_patching(model: Model, pairs: Any = ..., *, n: int = ..., seed: int = ..., system: Optional[str] = ..., syc_word: str = ..., anti_word: str = ..., labels: str = ..., metric: str = ..., positions: Union[str, Sequence[int]] = ..., freeze_mlp: bool = ..., top_k: int = ..., out: Optional[_Path] = ...) -> PathPatchingResult: ...
def activation_patching(model: Model, pairs: Any = ..., **kw: Any) -> PathPatchingResult: ...
def attribution_patching(model: Model, pairs: Any = ..., **kw: Any) -> PathPatchingResult: ...
def knockout(model: Model, heads: _Heads, max_k: int = ..., pairs: Any = ..., n: int = ..., seed: int = ..., system: Optional[str] = ..., syc_word: str = ..., anti_word: str = ..., labels: str = ..., metric: str = ...) -> KnockoutResult: ...
def attention_share(model: Model, heads: _Heads = ..., top_k: int = ..., pairs: Any = ..., n: int = ..., seed: int = ..., system: Optional[str] = ...) -> AttentionShareResult: ...
def evaluate(model: Model, questions: Any = ..., out: Optional[_Path] = ..., **flags: Any) -> EvalResult: ...
def tune(model: Model, heads: _Heads = ..., data: Optional[_Path] = ..., out: Optional[_Path] = ..., top_k: Optional[int] = ..., **flags: Any) -> TuneResult: ...
def pipeline(out: _Path, model: Union[Model, _Path, None] = ..., **flags: Any) -> PipelineResult: ...
