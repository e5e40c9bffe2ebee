"""Deltas δ = θ_ft − θ₀ streamed tensor by tensor from a fine-tuned checkpoint folder.

:func:`open_source` looks at a folder and returns a delta source: a
:class:`CheckpointDeltas` for a full fine-tune (safetensors, single file or
sharded with an index), a :class:`merger.delta.lora.LoraDeltas` for a PEFT
LoRA adapter (``adapter_config.json``). Both check everything the headers can
tell (names, shapes, dtypes, ranks) when they open, before any tensor is read,
so a wrong pairing fails in milliseconds; then ``iter_deltas()`` yields one
:class:`DeltaItem` at a time, so memory stays at a few tensors.

Rules for full checkpoints:

- every tensor of the base must be in the fine-tune and vice versa, with the
  same shape and dtype (a different number of embedding rows is reported as a
  vocabulary resize, which a delta cannot express);
- integer and bool tensors (buffers) must be identical and yield no delta;
- tied embeddings: a side whose config ties the embeddings may lack
  ``lm_head.weight``; it then stands for that side's input embedding. A
  fine-tune that stores an ``lm_head.weight`` different from its embedding
  while the base ties them has untied the head, which the base cannot express;
- a delta with NaN or inf is refused unless ``allow_nonfinite``.

Deltas are computed in fp32 (fp64 for fp64 tensors): the difference of two
values of a lower precision is exact there in all but extreme cases.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from merger.errors import IncompatibleError
from merger.io import Checkpoint, fingerprint, resolve_model_dir
from merger.lazy import torch

HEAD = "lm_head.weight"
EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class DeltaItem:
    """The delta of one tensor.

    Attributes:
        name: the base tensor's name.
        delta: θ_ft − θ₀, fp32 (fp64 for fp64 tensors), the base tensor's shape.
        dtype: the base tensor's dtype.
        base, finetuned: θ₀ and θ_ft, only when ``iter_deltas(with_weights=True)``.
        base_sq_norm: ‖θ₀‖² of this tensor when the source read it (full
            checkpoints), for the "fine-tuned from this base?" check; None otherwise.
    """

    name: str
    delta: torch.Tensor
    dtype: torch.dtype
    base: torch.Tensor | None = None
    finetuned: torch.Tensor | None = None
    base_sq_norm: float | None = None


class DeltaSource(Protocol):
    """What the compressor needs from a fine-tune, whatever its form."""

    kind: str
    path: Path
    peft_config: dict[str, Any] | None

    def names(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def iter_deltas(self, *, with_weights: bool = False) -> Iterator[DeltaItem]: ...

    def fingerprint(self) -> str: ...


def check_finite(name: str, delta: torch.Tensor, allow: bool) -> None:
    """Refuse a delta holding NaN or inf unless ``allow``."""
    if allow or bool(torch.isfinite(delta).all()):
        return
    bad = int((~torch.isfinite(delta)).sum())
    raise IncompatibleError(
        f"the delta of tensor {name!r} has {bad} NaN/inf values of {delta.numel()}: the "
        "fine-tune is probably broken (diverged training, an fp16 overflow); check it, or "
        "keep them anyway with allow_nonfinite=True (`--allow-nonfinite`)"
    )


def ties_embeddings(ckpt: Checkpoint) -> bool:
    """Whether the folder's config.json ties the output head to the input embedding."""
    config = ckpt.config or {}
    tie = config.get("tie_word_embeddings")
    if tie is None and isinstance(config.get("text_config"), dict):
        tie = config["text_config"].get("tie_word_embeddings")
    return bool(tie)


def input_embedding_name(ckpt: Checkpoint) -> str | None:
    """The name of the single input-embedding tensor, if one can be told apart."""
    found = [n for n in ckpt.names() if n.endswith(EMBED_SUFFIXES)]
    return found[0] if len(found) == 1 else None


def _is_vocab_tensor(name: str) -> bool:
    return name == HEAD or name.endswith((*EMBED_SUFFIXES, "embed_out.weight"))


def shape_mismatch(name: str, ft_shape: tuple[int, ...], base_shape: tuple[int, ...]) -> str:
    """An explanation of why a fine-tune tensor does not fit the base tensor."""
    if (
        _is_vocab_tensor(name)
        and len(ft_shape) == len(base_shape)
        and ft_shape[1:] == base_shape[1:]
    ):
        return (
            f"the fine-tune resized the vocabulary: {name!r} has {ft_shape[0]} rows in the "
            f"fine-tune but {base_shape[0]} in the base ({list(ft_shape)} vs {list(base_shape)}); "
            "a delta needs the base's vocabulary: fine-tune without resizing the embeddings, or "
            "use the resized model as the base"
        )
    return (
        f"tensor {name!r} is {list(ft_shape)} in the fine-tune but {list(base_shape)} in the "
        "base: the fine-tune is not of this base model"
    )


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(repr(n) for n in names[:5]) + more


class CheckpointDeltas:
    """Deltas of a full fine-tuned checkpoint against its base."""

    kind = "checkpoint"
    peft_config: dict[str, Any] | None = None

    def __init__(
        self,
        base: Checkpoint,
        finetuned: Checkpoint | str | os.PathLike[str],
        *,
        allow_nonfinite: bool = False,
    ) -> None:
        self.base = base
        self.ft = finetuned if isinstance(finetuned, Checkpoint) else Checkpoint(finetuned)
        self.path = self.ft.path
        self.allow_nonfinite = allow_nonfinite
        self._pairs = self._plan()

    def _plan(self) -> dict[str, str]:
        base, ft = self.base, self.ft
        pairs: dict[str, str] = {}
        missing: list[str] = []
        ft_embed = input_embedding_name(ft)
        for name in base.names():
            if name in ft:
                pairs[name] = name
            elif name == HEAD and ties_embeddings(ft) and ft_embed is not None:
                pairs[name] = ft_embed  # the fine-tune's head is its embedding
            else:
                missing.append(name)
        extra = [n for n in ft.names() if n not in base]
        if HEAD in extra and ties_embeddings(base) and input_embedding_name(base) is not None:
            if ft_embed is not None and torch.equal(ft.get(HEAD), ft.get(ft_embed)):
                extra.remove(HEAD)  # a tied head saved twice: nothing to express
            else:
                raise IncompatibleError(
                    f"the fine-tune {ft.path} has its own {HEAD!r}, different from its input "
                    f"embedding, but the base {base.path} ties them (it has no {HEAD!r}): a "
                    "delta on the base cannot untie the head; fine-tune with tied embeddings, "
                    "or save an untied copy of the base and use it as the base"
                )
        if missing:
            raise IncompatibleError(
                f"the fine-tune {ft.path} lacks {len(missing)} tensors of the base: "
                f"{_listing(missing)}; is it a fine-tune of {base.path}?"
            )
        if extra:
            raise IncompatibleError(
                f"the fine-tune {ft.path} has {len(extra)} tensors the base lacks: "
                f"{_listing(extra)}; is it a fine-tune of {base.path}?"
            )
        for name, ft_name in pairs.items():
            b, f = base.info(name), ft.info(ft_name)
            if b.shape != f.shape:
                raise IncompatibleError(shape_mismatch(name, f.shape, b.shape))
            if b.dtype != f.dtype:
                raise IncompatibleError(
                    f"tensor {name!r} is {f.dtype} in the fine-tune but {b.dtype} in the base; "
                    f"save the fine-tune in the base's dtype (e.g. "
                    f"`model.to({b.dtype}).save_pretrained(DIR)`)"
                )
        return pairs

    def names(self) -> list[str]:
        """Names that yield a delta (floating tensors; integer buffers only get checked)."""
        return [n for n in self._pairs if self.base.info(n).dtype.is_floating_point]

    def __len__(self) -> int:
        return len(self.names())

    def fingerprint(self) -> str:
        return fingerprint(self.ft)

    def iter_deltas(self, *, with_weights: bool = False) -> Iterator[DeltaItem]:
        for name, ft_name in self._pairs.items():
            b = self.base.get(name)
            f = self.ft.get(ft_name)
            if not b.dtype.is_floating_point:
                if not torch.equal(b, f):
                    raise IncompatibleError(
                        f"integer tensor {name!r} differs between the fine-tune and the base; "
                        "integer buffers cannot carry a delta (is it a fine-tune of this base?)"
                    )
                continue
            work = torch.float64 if b.dtype == torch.float64 else torch.float32
            delta = f.to(work) - b.to(work)
            check_finite(name, delta, self.allow_nonfinite)
            yield DeltaItem(
                name=name,
                delta=delta,
                dtype=b.dtype,
                base=b if with_weights else None,
                finetuned=f if with_weights else None,
                base_sq_norm=float(b.to(work).pow(2).sum()),
            )


def is_lora_adapter(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def open_source(
    path: str | os.PathLike[str],
    base: Checkpoint,
    *,
    allow_nonfinite: bool = False,
    all_tensors: bool = False,
) -> DeltaSource:
    """A LoRA adapter folder (has adapter_config.json) or a full fine-tuned checkpoint.

    ``all_tensors`` makes a LoRA source yield every floating tensor of the base
    (zero deltas outside the adapted modules), as ``apply_to="finetuned"`` needs.
    """
    folder = resolve_model_dir(path)
    if is_lora_adapter(folder):
        from merger.delta.lora import LoraDeltas

        return LoraDeltas(folder, base, allow_nonfinite=allow_nonfinite, all_tensors=all_tensors)
    return CheckpointDeltas(base, folder, allow_nonfinite=allow_nonfinite)
