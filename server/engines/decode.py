"""Batched autoregressive decoding for the torch engine, with per-row sampling and streaming.

Rows are left-padded into one batch; each step runs one forward pass with the
KV cache and picks every row's next token with that row's own options
(greedy, or temperature / top-k / top-p sampling from a per-row seeded
generator). A row ends at EOS, at a stop string, at its ``max_tokens`` or when
its request is cancelled; the batch ends when every row has. With one row and
greedy decoding this performs exactly the forward passes of
``model.generate(do_sample=False)``, so answers match plain transformers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from server.engines.base import Sampling


@dataclass
class RowState:
    """Decoding state of one row."""

    prompt_ids: list[int]
    sampling: Sampling
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded text emitted so far (stop strings already cut)
    done: bool = False
    finish_reason: str = ""
    hit_stop_string: bool = False
    generator: torch.Generator | None = None
    error: str = ""  # why the row was abandoned (finish_reason "error")


def _filter_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    logits = logits / s.temperature
    if s.top_k > 0 and s.top_k < logits.numel():
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop tokens once the mass before them already reaches top_p (keeps at least one).
        drop = probs.cumsum(-1) - probs >= s.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    return logits


def pick_token(logits: torch.Tensor, row: RowState) -> int:
    """The next token of one row from its last-position logits ``[vocab]``."""
    if row.sampling.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(_filter_logits(logits.float(), row.sampling), dim=-1)
    return int(torch.multinomial(probs, 1, generator=row.generator))


class Decoder:
    """Decodes batches for one model and tokenizer."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id if model.generation_config else None
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def _new_row(self, prompt_ids: list[int], sampling: Sampling) -> RowState:
        row = RowState(prompt_ids=prompt_ids, sampling=sampling)
        if not sampling.greedy:
            seed = (
                sampling.seed
                if sampling.seed is not None
                else int.from_bytes(os.urandom(8), "little")
            )
            row.generator = torch.Generator(device=self.device).manual_seed(seed % 2**63)
        return row

    def _advance(self, row: RowState, token: int, emit: Callable[[str], None]) -> None:
        """Append ``token`` to ``row``, emit new text, and decide whether the row ends."""
        if token in self.eos_ids:
            row.done, row.finish_reason = True, "stop"
            return
        row.generated.append(token)
        full = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        # Hold back an incomplete multi-byte character.
        if full.endswith("\ufffd"):
            full = full[:-1]
        # Cut before the earliest stop string (a token may complete several at once).
        cuts = [c for c in (full.find(stop) for stop in row.sampling.stop) if c >= 0]
        if cuts:
            cut = min(cuts)
            if cut > len(row.text):
                emit(full[len(row.text) : cut])
            row.text = full[:cut]
            row.done, row.finish_reason, row.hit_stop_string = True, "stop", True
            return
        if len(full) > len(row.text):
            # Keep back a tail that could still become a stop string.
            hold = max((len(s) - 1 for s in row.sampling.stop), default=0)
            safe = max(len(row.text), len(full) - hold)
            if safe > len(row.text):
                emit(full[len(row.text) : safe])
                row.text = full[:safe]
        if len(row.generated) >= row.sampling.max_tokens:
            row.done, row.finish_reason = True, "length"

    def _flush(self, row: RowState, emit: Callable[[str], None]) -> None:
        """At the end of a row, emit text held back for stop-string matching."""
        if row.hit_stop_string:
            return
        full = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        if len(full) > len(row.text):
            emit(full[len(row.text) :])
            row.text = full

    @torch.inference_mode()
    def run(
        self,
        prompts: Sequence[list[int]],
        samplings: Sequence[Sampling],
        emit: Callable[[int, str], None],
        finish: Callable[[int, RowState], None],
        cancelled: Callable[[int], bool],
    ) -> list[RowState]:
        """Decode ``prompts`` together; calls ``emit(i, text)`` and ``finish(i, row)``."""
        rows = [self._new_row(list(p), s) for p, s in zip(prompts, samplings, strict=True)]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1, :]
        step_pos = positions[:, -1:]
        while True:
            next_ids = torch.full((len(rows), 1), self.pad_id, dtype=torch.long)
            # NaN or +inf logits (a merge whose weights overflow): that row cannot go on.
            broken = (torch.isnan(logits) | torch.isposinf(logits)).any(dim=-1).tolist()
            for i, row in enumerate(rows):
                if row.done:
                    continue
                if cancelled(i):
                    row.done, row.finish_reason = True, "cancelled"
                    finish(i, row)
                    continue
                if broken[i]:
                    row.done, row.finish_reason = True, "error"
                    row.error = (
                        f"the merged model produced NaN/inf logits after {len(row.generated)} "
                        "tokens: the merge's weights are probably too large for the model's "
                        "dtype; use smaller weights"
                    )
                    finish(i, row)
                    continue
                token = pick_token(logits[i], row)
                next_ids[i, 0] = token
                self._advance(row, token, lambda text, i=i: emit(i, text))
                if row.done:
                    self._flush(row, lambda text, i=i: emit(i, text))
                    finish(i, row)
            if all(r.done for r in rows):
                return rows
            mask = torch.cat(
                [mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=self.device)], dim=1
            )
            step_pos = step_pos + 1
            out = self.model(
                input_ids=next_ids.to(self.device),
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :]
