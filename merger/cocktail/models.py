"""Candidate model folders for LM-Cocktail: opening, checking, and swapping weights in.

The candidates of one mix must share an architecture: the same tensor names and
shapes (checked from the safetensors headers before anything is loaded). The
model object is built once, from the first candidate, with ``from_pretrained``
(which knows the architecture, its tied weights and buffers); each other
candidate is then copied into it tensor by tensor from its lazily opened
:class:`~merger.io.Checkpoint`, instead of being loaded as a model of its own.

Only local folders of safetensors weights are accepted (no hub downloads, no
pickles) and ``trust_remote_code`` is never set: a model whose architecture is
not in transformers cannot be mixed here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from merger.cocktail.examples import check_model_type
from merger.errors import ConfigError, IncompatibleError
from merger.io import Checkpoint

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# model_type -> the transformers auto class LM-Cocktail loads it with.
AUTO_CLASS = {
    "decoder": "AutoModelForCausalLM",
    "encoder": "AutoModel",
    "reranker": "AutoModelForSequenceClassification",
}


def open_candidates(paths: Sequence[str | os.PathLike[str]]) -> list[Checkpoint]:
    """Open every folder and check that they can be mixed tensor by tensor.

    Raises:
        ConfigError: no models given.
        NotFoundError / UnsafeFormatError: a folder that is missing, a hub name, pickles.
        IncompatibleError: another architecture (``model_type`` in config.json),
            a tensor missing or extra, another shape, floating vs integer dtype.
    """
    if isinstance(paths, (str, bytes, os.PathLike)) or len(paths) == 0:
        raise ConfigError("give a list of at least one model folder to mix")
    ckpts = [Checkpoint(p) for p in paths]
    first = ckpts[0]
    arch0 = (first.config or {}).get("model_type")
    for ckpt in ckpts[1:]:
        arch = (ckpt.config or {}).get("model_type")
        if arch0 is not None and arch is not None and arch != arch0:
            raise IncompatibleError(
                f"{ckpt.path} is a {arch!r} model but {first.path} is {arch0!r}; "
                "only models of one architecture can be mixed"
            )
        missing = [n for n in first.names() if n not in ckpt]
        if missing:
            raise IncompatibleError(
                f"tensor {missing[0]!r} of {first.path} is missing from {ckpt.path} "
                f"({len(missing)} missing in all); the models must share an architecture"
            )
        extra = [n for n in ckpt.names() if n not in first]
        if extra:
            raise IncompatibleError(
                f"tensor {extra[0]!r} of {ckpt.path} is not in {first.path} "
                f"({len(extra)} extra in all); the models must share an architecture"
            )
        for info in first.infos():
            other = ckpt.info(info.name)
            if other.shape != info.shape:
                raise IncompatibleError(
                    f"tensor {info.name!r} is {list(other.shape)} in {ckpt.path} but "
                    f"{list(info.shape)} in {first.path}; the models must share an architecture"
                )
            if other.dtype.is_floating_point != info.dtype.is_floating_point:
                raise IncompatibleError(
                    f"tensor {info.name!r} is {other.dtype} in {ckpt.path} but {info.dtype} "
                    f"in {first.path}"
                )
    return ckpts


def load_model(path: str | os.PathLike[str], model_type: str) -> PreTrainedModel:
    """The model object LM-Cocktail would build for ``model_type``, on the CPU, in eval mode."""
    import transformers

    auto = getattr(transformers, AUTO_CLASS[check_model_type(model_type)])
    return auto.from_pretrained(str(path), use_safetensors=True, local_files_only=True)


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@dataclass(frozen=True)
class Binding:
    """Which checkpoint tensor fills which tensor of a model's state dict.

    ``targets`` maps a checkpoint tensor name to the model's tensor (a view that
    shares storage with the parameter or buffer). Model tensors tied to another
    one (e.g. ``lm_head.weight`` = ``embed_tokens.weight``) need no entry.
    Checkpoint tensors the model does not hold (say, the MLM head of a checkpoint
    loaded as a plain encoder) are merged and written out, but not bound.
    """

    targets: dict[str, torch.Tensor]

    def load(self, ckpt: Checkpoint) -> None:
        """Copy every bound tensor of ``ckpt`` into the model (converting dtype if needed)."""
        with torch.no_grad():
            for name, target in self.targets.items():
                target.copy_(ckpt.get(name))


def bind(model: nn.Module, ckpt: Checkpoint) -> Binding:
    """Match the model's state dict to the checkpoint's tensor names.

    A key matches the same name, or the name with or without the model's
    ``base_model_prefix`` (``bert.`` for a BERT head model...), as
    ``from_pretrained`` does.

    Raises:
        IncompatibleError: a model tensor that no checkpoint tensor fills (the
            model would keep stale or random values) or whose shape differs.
    """
    state = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") or ""
    names = set(ckpt.names())
    targets: dict[str, torch.Tensor] = {}
    filled: set[tuple[int, tuple[int, ...]]] = set()
    unbound = []
    for key, tensor in state.items():
        options = [key]
        if prefix:
            options += [f"{prefix}.{key}", key.removeprefix(f"{prefix}.")]
        name = next((o for o in options if o in names), None)
        if name is None:
            unbound.append(key)
            continue
        if tuple(ckpt.info(name).shape) != tuple(tensor.shape):
            raise IncompatibleError(
                f"tensor {name!r} is {list(ckpt.info(name).shape)} in {ckpt.path} but the model "
                f"built from its config.json expects {list(tensor.shape)}"
            )
        targets[name] = tensor
        filled.add(_where(tensor))
    missing = [k for k in unbound if _where(state[k]) not in filled]
    if missing:
        raise IncompatibleError(
            f"the model built from {ckpt.path} has tensor {missing[0]!r} but the checkpoint "
            f"holds no weights for it ({len(missing)} such tensors); check model_type "
            "(decoder / encoder / reranker) matches the checkpoint"
        )
    return Binding(targets)


def _where(t: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """Identity of a tensor's memory: tied tensors share it."""
    return t.data_ptr(), tuple(t.shape)
