"""The model: loading, tokens, the cache and hooks under TransformerLens' names and shapes."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from . import _pinpoint
from ._progress import progress_callback

Tokens = Union[str, Sequence[str], np.ndarray, Sequence[Sequence[int]], Sequence[int]]


class Config:
    """A model's configuration: TransformerLens' names (``n_layers``, ``n_heads``,
    ``d_head``, ``d_model``, ``d_vocab``, ``d_mlp``, ``n_key_value_heads``, ``n_ctx``)
    and every field of pinpoint's config under its own name.

    Example:
        >>> model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
        (30, 9, 64)
    """

    def __init__(self, fields: dict):
        self._fields = dict(fields)
        for k, v in fields.items():
            setattr(self, k, v)
        self.n_layers = fields["num_hidden_layers"]
        self.n_heads = fields["num_attention_heads"]
        self.n_key_value_heads = fields["num_key_value_heads"]
        self.d_head = fields["head_dim"]
        self.d_model = fields["hidden_size"]
        self.d_mlp = fields["intermediate_size"]
        self.d_vocab = fields["vocab_size"]
        self.n_ctx = fields["max_position_embeddings"]

    def to_dict(self) -> dict:
        """The config's fields as pinpoint names them.

        Example:
            >>> model.cfg.to_dict()["num_hidden_layers"]
            30
        """
        return dict(self._fields)

    def __repr__(self) -> str:
        return (
            f"Config(n_layers={self.n_layers}, n_heads={self.n_heads}, d_head={self.d_head}, "
            f"d_model={self.d_model}, d_vocab={self.d_vocab})"
        )


class Hook:
    """What a ``run_with_hooks`` function receives beside the activation: ``name`` (the
    hook's TransformerLens name) and ``layer``.

    Example:
        >>> def f(act, hook):
        ...     print(hook.name, hook.layer)
    """

    def __init__(self, name: str):
        self.name = name
        self.layer = int(name.split(".")[1])

    def __repr__(self) -> str:
        return f"Hook({self.name!r})"


class _Builtin:
    """A hook the engine runs itself (no Python in the loop)."""


class patch(_Builtin):
    """Overwrite an activation with given values at some positions (the engine's patch).

    ``values``: ``[width]`` for every sequence, or ``[batch, width]`` one row per sequence;
    with ``head`` (``hook_z`` only) the width is ``d_head`` and only that head changes.
    ``pos``: a position or a list of them, negative from each sequence's end (default
    ``-1``, the last token). ``seq``: the sequences to patch (default: all).

    Example:
        >>> _, cache = model.run_with_cache(other_tokens, names=["blocks.3.attn.hook_z"])
        >>> z = cache["blocks.3.attn.hook_z"][0, -1, 5]          # [d_head]
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=[
        ...     ("blocks.3.attn.hook_z", pinpoint.patch(z, head=5, pos=-1))])
    """

    def __init__(self, values, head: Optional[int] = None, pos=-1, seq=None):
        self.values = np.asarray(values, dtype=np.float32)
        self.head = head
        self.pos = pos
        self.seq = seq

    def specs(self, name: str, model: "Model", lengths: list) -> list:
        col0, width = _columns(name, model, self.head, self.values.shape[-1])
        seqs = range(len(lengths)) if self.seq is None else _as_list(self.seq)
        out = []
        for s in seqs:
            s = int(s)
            if not 0 <= s < len(lengths):
                raise ValueError(f"patch at {name}: no sequence {s} in a batch of {len(lengths)}")
            row = self.values if self.values.ndim == 1 else self.values[s]
            if row.shape != (width,):
                raise ValueError(
                    f"patch at {name}: values of shape {self.values.shape}; expected [{width}] "
                    f"or [batch, {width}]"
                )
            for p in _as_list(self.pos):
                p = int(p)
                q = p + lengths[s] if p < 0 else p
                if not 0 <= q < lengths[s]:
                    raise ValueError(
                        f"patch at {name}: position {p} is outside sequence {s} "
                        f"({lengths[s]} tokens)"
                    )
                out.append((name, s, q, col0, row.tolist()))
        return out


class mean_ablate(_Builtin):
    """Set an activation to fixed values at every token of every sequence (mean-ablation,
    as ``pinpoint knockout``). With ``head`` (``hook_z`` only) ``values`` is ``[d_head]``
    and only that head changes; without, ``[width]``.

    Example:
        >>> _, cache = model.run_with_cache(corpus, names=["blocks.3.attn.hook_z"])
        >>> mean = cache["blocks.3.attn.hook_z"][:, :, 5].mean(axis=(0, 1))
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=[
        ...     ("blocks.3.attn.hook_z", pinpoint.mean_ablate(mean, head=5))])
    """

    def __init__(self, values, head: Optional[int] = None):
        self.values = np.asarray(values, dtype=np.float32).reshape(-1)
        self.head = head

    def spec(self, name: str, model: "Model") -> tuple:
        col0, width = _columns(name, model, self.head, self.values.shape[0])
        if self.values.shape != (width,):
            raise ValueError(
                f"mean_ablate at {name}: values of shape {self.values.shape}; expected [{width}]"
            )
        return (name, col0, self.values.tolist())


class capture(_Builtin):
    """Keep the activation at a hook (TransformerLens' shape) in ``.value`` after the run;
    the engine copies it once, no Python in the loop.

    Example:
        >>> c = pinpoint.capture()
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.2.hook_resid_pre", c)])
        >>> c.value.shape
        (1, 7, 576)
    """

    def __init__(self):
        self.value: Optional[np.ndarray] = None


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple, range, np.ndarray)) else [x]


def _columns(name: str, model: "Model", head: Optional[int], n: int) -> tuple:
    """(first column, width) that a built-in writes at ``name``."""
    if head is None:
        return 0, model._width(name)
    if not name.endswith("attn.hook_z"):
        raise ValueError(f"{name}: head= applies to blocks.{{l}}.attn.hook_z only")
    if not 0 <= head < model.cfg.n_heads:
        raise ValueError(f"{name}: head {head} out of 0..{model.cfg.n_heads - 1}")
    return head * model.cfg.d_head, model.cfg.d_head


class Model:
    """A model on pinpoint's engine (CPU f32, or CUDA bf16) with TransformerLens' names
    and shapes. Load it with :meth:`Model.load`.

    Example:
        >>> import pinpoint
        >>> model = pinpoint.Model.load()            # the default model, fetched once
        >>> logits, cache = model.run_with_cache("The capital of France is")
        >>> cache["blocks.3.attn.hook_z"].shape      # [batch, pos, head_index, d_head]
        (1, 6, 9, 64)
    """

    def __init__(self, engine: "_pinpoint.Engine", device: str):
        self._e = engine
        self.device = device
        self.cfg = Config(json.loads(engine.config_json()))
        self.path = engine.path

    @classmethod
    def load(cls, path: Optional[str] = None, device: str = "cpu") -> "Model":
        """Load a HF model folder (config.json, *.safetensors, tokenizer.json) onto
        ``device`` ("cpu": f32, the oracle; "cuda": bf16 on GPU 0). ``path=None`` loads the
        default model (SmolLM2-135M-Instruct), fetched as ``pinpoint fetch`` does.

        Raises FileNotFoundError for a missing folder or file, ValueError for a folder
        that is not a model (the CLI's message).

        Example:
            >>> model = pinpoint.Model.load("models/smollm2", device="cpu")
        """
        if path is not None:
            path = str(path)
        return cls(_pinpoint.Engine.load(path, device), device)

    def __repr__(self) -> str:
        return f"Model({self.path!r}, device={self.device!r}, {self.cfg!r})"

    # ---- tokens -------------------------------------------------------------------------

    def to_tokens(self, text: Union[str, Sequence[str]], prepend_bos: bool = False):
        """Token ids of ``text``: ``[1, pos]`` (int64) for a string; for a list of strings
        ``[batch, pos]`` when all have the same length, else a list of 1-D arrays.
        ``prepend_bos`` adds the tokenizer's special tokens (as HF's
        ``add_special_tokens``).

        Example:
            >>> model.to_tokens("Paris is")
            array([[20005,   314]])
        """
        if isinstance(text, str):
            return np.asarray([self._e.encode(text, prepend_bos)], dtype=np.int64)
        rows = [np.asarray(self._e.encode(t, prepend_bos), dtype=np.int64) for t in text]
        if rows and all(len(r) == len(rows[0]) for r in rows):
            return np.stack(rows)
        return rows

    def to_string(self, tokens, skip_special_tokens: bool = False):
        """Text of token ids: a string for 1-D ids, a list for ``[batch, pos]`` or a list.

        Example:
            >>> model.to_string(model.to_tokens("Paris is")[0])
            'Paris is'
        """
        if isinstance(tokens, np.ndarray) and tokens.ndim == 1 or (
            isinstance(tokens, (list, tuple)) and tokens and np.isscalar(tokens[0])
        ):
            return self._e.decode([int(t) for t in tokens], skip_special_tokens)
        return [self.to_string(t, skip_special_tokens) for t in tokens]

    def chat_tokens(self, messages, add_generation_prompt: bool = True) -> np.ndarray:
        """The chat template applied to ``messages`` (dicts with role and content, or
        (role, content) pairs), tokenized: ``[1, pos]``.

        Example:
            >>> model.chat_tokens([{"role": "user", "content": "Are you sure?"}]).shape
            (1, 31)
        """
        return np.asarray(
            [self._e.encode_chat(_messages(messages), add_generation_prompt)], dtype=np.int64
        )

    def hook_names(self) -> list:
        """Every name ``run_with_cache`` takes, in forward order.

        Example:
            >>> model.hook_names()[:3]
            ['blocks.0.hook_resid_pre', 'blocks.0.ln1.hook_normalized', 'blocks.0.attn.hook_pattern']
        """
        return _pinpoint.hook_names(self._e)

    # ---- forward ----------------------------------------------------------------------------

    def _seqs(self, tokens: Tokens, attention_mask=None) -> list:
        """Token lists of a batch: text, ids ``[pos]``/``[batch, pos]`` (with an optional
        ``attention_mask`` marking real tokens with 1), or a list of id lists (ragged)."""
        if isinstance(tokens, str) or (
            isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)
        ):
            toks = self.to_tokens(tokens)
            return [list(map(int, t)) for t in toks]
        if isinstance(tokens, np.ndarray) or (
            isinstance(tokens, (list, tuple)) and tokens and np.isscalar(tokens[0])
        ):
            arr = np.asarray(tokens)
            if arr.ndim == 1:
                arr = arr[None, :]
            if arr.ndim != 2:
                raise ValueError(f"tokens of shape {arr.shape}: expected [pos] or [batch, pos]")
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"tokens must be integers, got {arr.dtype}")
            if attention_mask is not None:
                mask = np.asarray(attention_mask).astype(bool)
                if mask.shape != arr.shape:
                    raise ValueError(
                        f"attention_mask of shape {mask.shape} does not match tokens {arr.shape}"
                    )
                rows = [row[m] for row, m in zip(arr, mask)]
            else:
                rows = list(arr)
        else:
            if attention_mask is not None:
                raise ValueError("attention_mask goes with a [batch, pos] array, not a list")
            rows = [np.asarray(r) for r in tokens]
        out = []
        for i, r in enumerate(rows):
            r = np.asarray(r).reshape(-1)
            if r.size and (not np.issubdtype(r.dtype, np.integer) or r.min() < 0):
                raise ValueError(f"sequence {i}: token ids must be non-negative integers")
            out.append([int(t) for t in r])
        return out

    def _width(self, name: str) -> int:
        c = self.cfg
        return c.n_heads * c.d_head if name.endswith("attn.hook_z") else c.d_model

    def _tl_shape(self, name: str, a: np.ndarray) -> np.ndarray:
        """``[batch, pos, width]`` to TransformerLens' shape (``hook_z``: head, d_head)."""
        if name.endswith("attn.hook_z"):
            return a.reshape(a.shape[0], a.shape[1], self.cfg.n_heads, self.cfg.d_head)
        return a

    def run_with_cache(
        self,
        tokens: Tokens,
        names: Optional[Iterable[str]] = None,
        attention_mask=None,
        logits: str = "all",
    ):
        """Run the model and keep activations: ``(logits, cache)``.

        ``logits``: ``[batch, pos, d_vocab]`` ("all"), ``[batch, d_vocab]`` ("last", each
        sequence's last token) or None ("none"). ``cache`` maps each name (default: every
        name of :meth:`hook_names`) to a numpy array in TransformerLens' shape:
        ``blocks.{l}.attn.hook_z`` ``[batch, pos, head_index, d_head]``,
        ``blocks.{l}.attn.hook_pattern`` ``[batch, head_index, query_pos, key_pos]``,
        ``hook_resid_pre``/``hook_resid_post``/``hook_attn_out``/``hook_mlp_out``/
        ``ln1.hook_normalized`` ``[batch, pos, d_model]``. Sequences of different lengths
        (a list, or ``[batch, pos]`` with ``attention_mask``) run as one batch, each from
        position 0; past a sequence's end the arrays hold zeros. Each activation is copied
        once, straight into its array.

        Example:
            >>> logits, cache = model.run_with_cache(["Paris is", "The capital of Italy is"],
            ...                                      names=["blocks.0.attn.hook_z"])
            >>> cache["blocks.0.attn.hook_z"].shape
            (2, 5, 9, 64)
        """
        seqs = self._seqs(tokens, attention_mask)
        names = self.hook_names() if names is None else [str(n) for n in names]
        lg, cache = _pinpoint.forward(self._e, seqs, names, logits)
        return lg, {n: self._tl_shape(n, cache[n]) for n in names}

    def run_with_hooks(
        self,
        tokens: Tokens,
        fwd_hooks: Sequence[tuple] = (),
        attention_mask=None,
        logits: str = "all",
    ):
        """Run the model with hooks: ``fwd_hooks`` is a list of ``(name, fn)``, as in
        TransformerLens. ``fn(activation, hook)`` sees the activation at that hook point
        (numpy, TransformerLens' shape) and may edit it in place or return a replacement of
        the same shape; ``hook.name`` names the point. ``fn`` may also be one of the
        engine's built-ins, which run without Python: :class:`patch`, :class:`mean_ablate`,
        :class:`capture`. Built-ins act before Python hooks at the same point. Returns the
        logits as :meth:`run_with_cache`.

        Example:
            >>> def zero_head_5(z, hook):
            ...     z[:, :, 5] = 0.0                      # in place
            >>> logits = model.run_with_hooks(tokens, fwd_hooks=[
            ...     ("blocks.3.attn.hook_z", zero_head_5)])
        """
        seqs = self._seqs(tokens, attention_mask)
        lengths = [len(s) for s in seqs]
        hooks, patches, ablations, captures = [], [], [], []
        for item in fwd_hooks:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError("fwd_hooks: give a list of (name, fn) pairs")
            name, fn = str(item[0]), item[1]
            if isinstance(fn, patch):
                patches.extend(fn.specs(name, self, lengths))
            elif isinstance(fn, mean_ablate):
                ablations.append(fn.spec(name, self))
            elif isinstance(fn, capture):
                captures.append((name, fn))
            elif callable(fn):
                hooks.append((name, self._python_hook(name, fn, len(seqs))))
            else:
                raise ValueError(f"fwd_hooks: {name}: {fn!r} is not callable")
        names = [n for n, _ in captures]
        lg, cache = _pinpoint.forward(self._e, seqs, names, logits, hooks, patches, ablations)
        for n, c in captures:
            c.value = self._tl_shape(n, cache[n])
        return lg

    def _python_hook(self, name: str, fn: Callable, batch: int) -> Callable:
        hook = Hook(name)

        def call(point: str, flat: np.ndarray) -> np.ndarray:
            # [batch * max_len * width] from the engine -> TransformerLens' shape (a view).
            act = self._tl_shape(point, flat.reshape(batch, -1, self._width(point)))
            out = fn(act, hook)
            if out is None:
                out = act
            out = np.asarray(out)
            if out.shape != act.shape:
                raise ValueError(
                    f"hook {point} returned an array of shape {out.shape}; expected {act.shape}"
                )
            return np.ascontiguousarray(out, dtype=np.float32).reshape(-1)

        return call

    # ---- generation -------------------------------------------------------------------------

    def generate(
        self,
        prompt,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] = (),
        prepend_bos: bool = False,
        return_tokens: bool = False,
        stop_at_eos: bool = True,
    ):
        """Continue raw text (no chat template) as ``pinpoint generate``: greedy at
        ``temperature=0``, else seeded sampling; stops at the end-of-turn tokens (unless
        ``stop_at_eos=False``) or a ``stop`` string. ``prompt``: a string, a list of strings (one batch), or token
        ids. Returns the new text (a list for a list), or the new token ids with
        ``return_tokens=True``.

        Example:
            >>> model.generate("The capital of France is", max_new_tokens=4)
            ' Paris.'
        """
        single = isinstance(prompt, str)
        if isinstance(prompt, str) or (
            isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], str)
        ):
            texts = [prompt] if single else list(prompt)
            seqs = [self._e.encode(t, prepend_bos) for t in texts]
        else:
            seqs = self._seqs(prompt)
            single = len(seqs) == 1 and np.ndim(prompt) == 1
        outs = self._e.generate(
            seqs,
            int(max_new_tokens),
            float(temperature),
            float(top_p),
            int(seed),
            list(stop),
            self._e.end_of_turn_ids() if stop_at_eos else [],
            progress_callback(),
        )
        if return_tokens:
            res = [np.asarray(t, dtype=np.int64) for t, _ in outs]
        else:
            res = [self._e.decode(t, True) for t, _ in outs]
        return res[0] if single else res

    def chat(
        self,
        message,
        system: Optional[str] = None,
        history: Sequence = (),
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] = (),
    ) -> str:
        """The model's reply to ``message`` through its chat template, as ``pinpoint chat``
        (``history``: earlier messages; ``message`` may also be a whole list of messages).

        Example:
            >>> model.chat("What is the capital of France?", max_new_tokens=16)
            'The capital of France is Paris.'
        """
        msgs = []
        if system is not None:
            msgs.append(("system", system))
        msgs.extend(_messages(history))
        if isinstance(message, str):
            msgs.append(("user", message))
        else:
            msgs.extend(_messages(message))
        ids = self._e.encode_chat(msgs, True)
        (toks, _), = self._e.generate(
            [ids],
            int(max_new_tokens),
            float(temperature),
            float(top_p),
            int(seed),
            list(stop),
            self._e.end_of_turn_ids(),
            progress_callback(),
        )
        return self._e.decode(toks, True)


def _messages(messages) -> list:
    out = []
    for m in messages:
        if isinstance(m, dict):
            if "role" not in m or "content" not in m:
                raise ValueError(f"a message needs 'role' and 'content': {m!r}")
            out.append((str(m["role"]), str(m["content"])))
        else:
            role, content = m
            out.append((str(role), str(content)))
    return out
