"""Deltas of a PEFT LoRA adapter: δW = scale · B·A per adapted module.

A PEFT adapter folder holds ``adapter_config.json`` and
``adapter_model.safetensors`` with, per target module ``M`` of the base,
``base_model.model.M.lora_A.weight`` ``[r, in]`` and
``base_model.model.M.lora_B.weight`` ``[out, r]``. The weight delta of
``M.weight`` is

    δ = scale · B @ A           ``[out, in]``, transposed when ``fan_in_fan_out``
    scale = lora_alpha / r      (lora_alpha / √r with ``use_rslora``)

with ``r`` and ``lora_alpha`` overridden per module by ``rank_pattern`` and
``alpha_pattern`` (PEFT's rule: a pattern key ``p`` applies to module ``M``
when ``M`` matches the regex ``(.*\\.)?(p)$``; the first match wins). The rank
read from the tensors must equal that ``r``. Embedding modules use
``lora_embedding_A`` ``[r, vocab]`` and ``lora_embedding_B`` ``[dim, r]``,
δ = scale · (B @ A)ᵀ. Full tensors saved beside the LoRA pairs
(``modules_to_save``, trained biases, resized embeddings) are stored as
``saved − base``.

DoRA (``use_dora``) and other ``peft_type`` values are refused: their weight
change is not a fixed low-rank product.

:meth:`LoraDeltas.lowrank` gives an adapted tensor's update as its factors
(:class:`~merger.lowrank.LowRankTensor`, oriented like the base tensor, the
scale recorded, not folded in), which ``strategy: lowrank`` stores exactly;
:meth:`LoraDeltas.iter_deltas` gives every update as a dense δ (for DARE).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merger.delta.extract import DeltaItem, check_finite, shape_mismatch
from merger.errors import ConfigError, CorruptError, IncompatibleError, UnsafeFormatError
from merger.io import Checkpoint, fingerprint
from merger.lazy import torch
from merger.lowrank import LowRankTensor
from merger.sparse import float_value_dtypes

PREFIX = "base_model.model."
WEIGHTS = "adapter_model.safetensors"
_PAIR_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_(?:embedding_)?[AB])(?:\.weight)?")
_MERGE_HINT = (
    "merge it into the base with PEFT (`PeftModel.from_pretrained(base, ADAPTER)"
    ".merge_and_unload().save_pretrained(DIR)`) and compress DIR as a full checkpoint"
)


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup for one module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass(frozen=True)
class _Pair:
    a_key: str
    b_key: str
    scale: float
    embedding: bool
    transpose: bool


class LoraDeltas:
    """Deltas of a PEFT LoRA adapter folder against its base."""

    kind = "lora"

    def __init__(
        self,
        path: str | Path,
        base: Checkpoint,
        *,
        allow_nonfinite: bool = False,
        all_tensors: bool = False,
    ) -> None:
        self.path = Path(path)
        self.base = base
        self.allow_nonfinite = allow_nonfinite
        self.peft_config: dict[str, Any] = json.loads(
            (self.path / "adapter_config.json").read_text()
        )
        self._check_config()
        if not (self.path / WEIGHTS).is_file():
            pickles = [p.name for p in self.path.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
            if pickles:
                raise UnsafeFormatError(
                    f"{self.path} holds its adapter as pickle ({', '.join(pickles)}); Cocktail "
                    "never unpickles weights. Convert it in a trusted environment: "
                    "`PeftModel.from_pretrained(base, ADAPTER).save_pretrained(DIR, "
                    "safe_serialization=True)`"
                )
            raise CorruptError(f"{self.path} has adapter_config.json but no {WEIGHTS}")
        self.adapter = Checkpoint(self.path)
        self._pairs: dict[str, _Pair] = {}
        self._full: dict[str, str] = {}
        self._plan()
        touched = set(self._pairs) | set(self._full)
        self._order = [
            n
            for n in base.names()
            if n in touched or (all_tensors and base.info(n).dtype.is_floating_point)
        ]

    def _check_config(self) -> None:
        cfg = self.peft_config
        peft_type = str(cfg.get("peft_type", "")).upper()
        if peft_type != "LORA":
            raise ConfigError(
                f"{self.path} is a {peft_type or 'unknown'} adapter; only LoRA adapters are "
                f"supported: {_MERGE_HINT}"
            )
        if cfg.get("use_dora"):
            raise ConfigError(
                f"{self.path} is a DoRA adapter (use_dora: true), which is not supported: its "
                f"weight change depends on the norm of W + BA, not on B·A alone; {_MERGE_HINT}"
            )
        for key in ("r", "lora_alpha"):
            if not isinstance(cfg.get(key), int | float) or cfg[key] <= 0:
                raise ConfigError(f"{self.path}/adapter_config.json needs a positive {key!r}")

    def _scale(self, module: str, rank: int) -> float:
        patterns = self.peft_config.get("alpha_pattern") or {}
        alpha = float(pattern_value(patterns, module, self.peft_config["lora_alpha"]))
        if self.peft_config.get("use_rslora"):
            return alpha / math.sqrt(rank)
        return alpha / rank

    def _plan(self) -> None:
        halves: dict[str, dict[str, str]] = {}
        for key in self.adapter.names():
            if not key.startswith(PREFIX):
                raise ConfigError(f"{self.path}: unexpected tensor {key!r} (no {PREFIX!r} prefix)")
            rest = key[len(PREFIX) :]
            m = _PAIR_KEY.fullmatch(rest)
            if m:
                halves.setdefault(m["module"], {})[m["part"]] = key
            elif any(seg.startswith("lora_") for seg in rest.split(".")):
                raise ConfigError(
                    f"{self.path}: adapter tensor {key!r} is not supported (only lora_A/lora_B "
                    f"pairs and full tensors are); {_MERGE_HINT}"
                )
            else:
                self._full[rest.replace(".modules_to_save", "")] = key
        for module, parts in halves.items():
            self._plan_pair(module, parts)
        for name, key in self._full.items():
            if name in self._pairs:
                raise ConfigError(f"{self.path}: {name!r} is both LoRA-adapted and saved in full")
            if name not in self.base:
                raise IncompatibleError(
                    f"adapter {self.path} saves {name!r} in full, but the base has no such tensor"
                )
            saved, b = self.adapter.info(key), self.base.info(name)
            if saved.shape != b.shape:
                raise IncompatibleError(shape_mismatch(name, saved.shape, b.shape))

    def _plan_pair(self, module: str, parts: dict[str, str]) -> None:
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_part, b_part = (
            ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
        )
        if set(parts) != {a_part, b_part}:
            raise CorruptError(
                f"adapter {self.path}: module {module!r} has {sorted(parts)} but needs both "
                f"{a_part} and {b_part}"
            )
        a, b = self.adapter.info(parts[a_part]), self.adapter.info(parts[b_part])
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise ConfigError(
                f"adapter {self.path}: module {module!r} has LoRA factors of shapes "
                f"{list(a.shape)} and {list(b.shape)}; only linear and embedding LoRA are supported"
            )
        patterns = self.peft_config.get("rank_pattern") or {}
        expected = int(pattern_value(patterns, module, self.peft_config["r"]))
        if a.shape[0] != b.shape[1] or a.shape[0] != expected:
            raise ConfigError(
                f"adapter {self.path}: module {module!r} has {a_part} {list(a.shape)} and "
                f"{b_part} {list(b.shape)} (rank {a.shape[0]}/{b.shape[1]}), but "
                f"adapter_config.json gives it rank r={expected}; the scale alpha/r would be "
                "wrong: fix r (or rank_pattern) in adapter_config.json"
            )
        target = f"{module}.weight"
        if target not in self.base:
            raise IncompatibleError(
                f"adapter {self.path} adapts {module!r}, but the base has no {target!r}: "
                "was the adapter trained on another model?"
            )
        transpose = embedding or bool(self.peft_config.get("fan_in_fan_out"))
        shape = (a.shape[1], b.shape[0]) if transpose else (b.shape[0], a.shape[1])
        base_shape = self.base.info(target).shape
        if shape != base_shape:
            raise IncompatibleError(
                f"adapter {self.path}: the delta of {target!r} would be {list(shape)} (B·A with "
                f"fan_in_fan_out={bool(self.peft_config.get('fan_in_fan_out'))}) but the base "
                f"tensor is {list(base_shape)}: was the adapter trained on another model?"
            )
        self._pairs[target] = _Pair(
            a_key=parts[a_part],
            b_key=parts[b_part],
            scale=self._scale(module, expected),
            embedding=embedding,
            transpose=transpose,
        )

    def scale(self, name: str) -> float:
        """The LoRA scale applied to the delta of base tensor ``name``."""
        return self._pairs[name].scale

    def names(self) -> list[str]:
        return list(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def fingerprint(self) -> str:
        h = hashlib.sha256(fingerprint(self.adapter).encode())
        h.update(json.dumps(self.peft_config, sort_keys=True).encode())
        return "sha256:" + h.hexdigest()[:32]

    def delta(self, name: str) -> torch.Tensor:
        """δ of one base tensor in fp32 (zeros when the adapter leaves it alone)."""
        pair = self._pairs.get(name)
        if pair is not None:
            a = self.adapter.get(pair.a_key, dtype=torch.float32)
            b = self.adapter.get(pair.b_key, dtype=torch.float32)
            d = (b @ a) * pair.scale
            return d.t().contiguous() if pair.transpose else d
        if name in self._full:
            saved = self.adapter.get(self._full[name], dtype=torch.float32)
            return saved - self.base.get(name, dtype=torch.float32)
        return torch.zeros(self.base.info(name).shape, dtype=torch.float32)

    def lowrank(self, name: str) -> LowRankTensor | None:
        """The update of base tensor ``name`` as its factors; None unless LoRA-adapted.

        The factors keep the adapter's float dtype (fp64 becomes fp32); with
        ``fan_in_fan_out`` and for embeddings they are the adapter's Bᵀ and Aᵀ.
        """
        pair = self._pairs.get(name)
        if pair is None:
            return None
        a, b = self.adapter.get(pair.a_key), self.adapter.get(pair.b_key)
        dtype = a.dtype if a.dtype == b.dtype and a.dtype in float_value_dtypes() else torch.float32
        a, b = a.to(dtype), b.to(dtype)
        check_finite(f"{name} (lora A)", a, self.allow_nonfinite)
        check_finite(f"{name} (lora B)", b, self.allow_nonfinite)
        if pair.transpose:
            a, b = b.t().contiguous(), a.t().contiguous()
        return LowRankTensor(shape=tuple(self.base.info(name).shape), a=a, b=b, scale=pair.scale)

    def iter_deltas(self, *, with_weights: bool = False) -> Iterator[DeltaItem]:
        for name in self._order:
            delta = self.delta(name)
            check_finite(name, delta, self.allow_nonfinite)
            base = self.base.get(name) if with_weights else None
            yield DeltaItem(
                name=name,
                delta=delta,
                dtype=self.base.info(name).dtype,
                base=base,
                finetuned=None if base is None else base.float() + delta,
            )
