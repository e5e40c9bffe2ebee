"""Where the decoder layers are in a checkpoint, read from tensor names and config.json.

No per-architecture tables: a layer tensor is one whose name has a numeric
component (``model.layers.7.mlp.up_proj.weight``, ``transformer.h.7.attn...``);
the text before the first number is the stack's prefix. When a checkpoint has
several numbered stacks (a vision tower beside the decoder), the decoder is the
stack whose layer count equals config.json's ``num_hidden_layers`` (or
``n_layer``/``num_layers``/``n_layers``, also inside ``text_config``); the others
are treated as non-layer tensors. This covers Llama, Mistral, Qwen, Gemma, Phi,
GPT-2, GPT-NeoX, Falcon and their kin.

Non-layer tensors are split into those before the stack (embeddings: names
containing ``embed``, ``wte``, ``wpe``) and after it (final norm, LM head);
with slices, the former come from the first slice's sources and the latter from
the last slice's, as in mergekit.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

_LAYER = re.compile(r"^(?P<prefix>(?:[^.]+\.)*?[^.\d][^.]*\.)(?P<index>\d+)\.(?P<rest>.+)$")
NUM_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_PRE_MARKERS = ("embed", "wte", "wpe")
_HEAD_MARKERS = ("lm_head", "embed_out")


def config_num_layers(config: dict[str, Any] | None) -> tuple[tuple[str, ...], int] | None:
    """(key path, value) of the layer count in a config.json dict, if it has one."""
    if not config:
        return None
    for scope in ((), ("text_config",)):
        node: Any = config
        for part in scope:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        for key in NUM_LAYER_KEYS:
            if isinstance(node.get(key), int):
                return (*scope, key), node[key]
    return None


@dataclass(frozen=True)
class LayerLayout:
    """The layer stack of one checkpoint.

    ``layers[i]`` lists the name suffixes (after ``prefix + f"{i}."``) of layer i.
    """

    prefix: str | None
    layers: tuple[tuple[str, ...], ...]
    pre: tuple[str, ...]
    post: tuple[str, ...]
    layer_of: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def name(self, layer: int, rest: str) -> str:
        return f"{self.prefix}{layer}.{rest}"

    def embedding_name(self) -> str | None:
        """The input embedding (what a tied LM head shares), if it can be told by name."""
        for n in self.pre:
            if "embed" in n.lower() or "wte" in n.lower():
                return n
        return None


def is_head(name: str) -> bool:
    return any(m in name for m in _HEAD_MARKERS)


def layout(names: list[str], config: dict[str, Any] | None) -> LayerLayout:
    """Split ``names`` into pre-stack, per-layer and post-stack tensors."""
    stacks: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for n in names:
        m = _LAYER.match(n)
        if m:
            stacks[m["prefix"]][int(m["index"])].append(m["rest"])
    count = config_num_layers(config)
    prefix = None
    if stacks:
        fits = [p for p, s in stacks.items() if count is None or max(s) + 1 == count[1]]
        pool = fits or list(stacks)
        prefix = max(pool, key=lambda p: sum(len(v) for v in stacks[p].values()))
    layers: tuple[tuple[str, ...], ...] = ()
    layer_of: dict[str, int] = {}
    if prefix is not None:
        stack = stacks[prefix]
        n_layers = max(stack) + 1
        layers = tuple(tuple(stack.get(i, ())) for i in range(n_layers))
        for i, rests in enumerate(layers):
            for r in rests:
                layer_of[f"{prefix}{i}.{r}"] = i
    others = [n for n in names if n not in layer_of]
    pre = tuple(n for n in others if any(m in n.lower() for m in _PRE_MARKERS) and not is_head(n))
    post = tuple(n for n in others if n not in pre)
    return LayerLayout(prefix=prefix, layers=layers, pre=pre, post=post, layer_of=layer_of)
