"""LM-Cocktail's API, drop-in: ``mix_models``, ``mix_models_with_data``, ``mix_models_by_layers``.

Same names, arguments and meaning as LM-Cocktail 0.0.4
(https://github.com/FlagOpen/FlagEmbedding/tree/master/LM_Cocktail): each returns
the mixed model object and, given ``output_path``, writes it there as a model
folder. Differences, all deliberate:

- Much less work. LM-Cocktail loads every candidate as a full model and keeps
  all their state dicts in memory, and pads every example to
  ``max_input_length``. Here the model object is built once (from the first
  candidate), each candidate's weights are copied into it tensor by tensor for
  scoring, batches are padded to their longest example, and the merge streams
  one tensor at a time to disk (:class:`~merger.io.ShardedWriter`). Peak memory
  is about one model plus one tensor per candidate.
- The output folder keeps the first model's tensor names, dtypes, config.json,
  generation_config.json and tokenizer files; tensors the model object does not
  use (e.g. an MLM head under ``model_type="encoder"``) are mixed too instead of
  being dropped. Encoders are not rewritten into a sentence-transformers folder
  (their sentence-transformers files are copied when the first model has them).
- Weights must sum to 1 within 1e-3 (LM-Cocktail's check accepts any sum below 1)
  and are used as given, not renormalized.
- ``mix_models_with_data`` supports rerankers; negatives are drawn with
  ``random.Random(seed)``; ``neg_number`` defaults to 2 (LM-Cocktail: 7, so
  examples with fewer negatives fail there).
- Integer tensors are taken from the first model (LM-Cocktail ends up with the
  last model's; they are normally identical, and a warning says when not).
- Local folders of safetensors only; no ``trust_remote_code``.
- The library logs the weights (logger ``merger.cocktail.mix``) instead of printing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from merger.cocktail.examples import DecoderMode, check_examples, check_model_type
from merger.cocktail.losses import make_scorer
from merger.cocktail.models import Binding, bind, load_model, load_tokenizer, open_candidates
from merger.cocktail.output import check_output, copy_side_files
from merger.cocktail.weights import check_mix_weights, check_temperature, softmax_weights
from merger.io import Checkpoint, ShardedWriter, TensorSpec, resolve_model_dir
from merger.methods import MergeInputs, TensorContext, get_method

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class WeightedSum:
    """θ = Σ wᵢ θᵢ for one tensor, through the registry's ``linear`` method (normalize: false).

    Floating tensors are summed in fp32 (fp64 for fp64) and returned in the first
    model's dtype. Integer tensors (position ids and the like) are not averaged:
    the first model's is returned.
    """

    def __init__(self, weights: Sequence[float]) -> None:
        self.method = get_method("linear")
        self.params = self.method.make_params({"normalize": False})
        self.model_params = [
            self.method.make_model_params({"weight": w}, where=f"model {i}")
            for i, w in enumerate(weights)
        ]

    def __call__(self, name: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        first = tensors[0]
        if not first.is_floating_point():
            if any(not torch.equal(t, first) for t in tensors[1:]):
                log.warning("integer tensor %r differs between models; keeping the first", name)
            return first
        ctx = TensorContext(name=name)
        return self.method.fn(
            MergeInputs(tensors=list(tensors)), self.params, self.model_params, ctx
        )


def merge_checkpoints(
    ckpts: Sequence[Checkpoint],
    weights: Sequence[float],
    *,
    output_path: Path | None = None,
    binding: Binding | None = None,
) -> list[Path]:
    """Stream Σ wᵢ θᵢ tensor by tensor into ``output_path`` and/or a bound model.

    ``ckpts`` must have passed :func:`~merger.cocktail.models.open_candidates`.
    Returns the shard files written (none without ``output_path``).
    """
    weighted = WeightedSum(weights)
    first = ckpts[0]
    writer = None
    if output_path is not None:
        writer = ShardedWriter(
            output_path, [TensorSpec(i.name, i.shape, i.dtype) for i in first.infos()]
        )
    try:
        for info in first.infos():
            merged = weighted(info.name, [c.get(info.name) for c in ckpts])
            if writer is not None:
                writer.write(info.name, merged)
            target = binding.targets.get(info.name) if binding is not None else None
            if target is not None:
                with torch.no_grad():
                    target.copy_(merged)
        shards = writer.close() if writer is not None else []
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if output_path is not None:
        copy_side_files(first.path, output_path)
    return shards


def _paths(model_names_or_paths: Sequence[PathLike]) -> list[PathLike]:
    if isinstance(model_names_or_paths, (str, bytes, os.PathLike)):
        return [model_names_or_paths]  # type: ignore[list-item]
    return list(model_names_or_paths)


def _mix(
    paths: Sequence[PathLike],
    model_type: str,
    weights: Sequence[float],
    output_path: PathLike | None,
) -> PreTrainedModel:
    check_model_type(model_type)
    weights = check_mix_weights(weights, len(paths))
    ckpts = open_candidates(paths)
    out = check_output(output_path, [c.path for c in ckpts]) if output_path else None
    model = load_model(ckpts[0].path, model_type)
    merge_checkpoints(ckpts, weights, output_path=out, binding=bind(model, ckpts[0]))
    _log_weights(ckpts, weights)
    return model


def mix_models(
    model_names_or_paths: Sequence[PathLike],
    model_type: str,
    weights: Sequence[float],
    output_path: PathLike | None = None,
) -> PreTrainedModel:
    """Mix models with given weights: θ = Σ wᵢ θᵢ; returns the model, writes ``output_path``.

    Args:
        model_names_or_paths: local model folders (safetensors), one architecture.
        model_type: ``decoder`` (causal LM), ``encoder`` (embedder, ``AutoModel``)
            or ``reranker`` (``AutoModelForSequenceClassification``).
        weights: one per model, summing to 1 (within 1e-3), used as given.
        output_path: folder to write the mixed model to (must not hold weights yet).
    """
    return _mix(_paths(model_names_or_paths), model_type, weights, output_path)


def mix_models_by_layers(
    model_names_or_paths: Sequence[PathLike],
    model_type: str,
    weights: Sequence[float],
    output_path: PathLike | None = None,
) -> PreTrainedModel:
    """LM-Cocktail's low-memory variant of :func:`mix_models`; the same result.

    LM-Cocktail saves every tensor of every model to temporary files and merges
    them one at a time; :func:`mix_models` here already streams tensor by
    tensor, so both run the same code.
    """
    return _mix(_paths(model_names_or_paths), model_type, weights, output_path)


def write_mix(
    model_names_or_paths: Sequence[PathLike], weights: Sequence[float], output_path: PathLike
) -> list[Path]:
    """Write Σ wᵢ θᵢ to ``output_path`` without building a model object (the CLI's path)."""
    paths = _paths(model_names_or_paths)
    weights = check_mix_weights(weights, len(paths))
    ckpts = open_candidates(paths)
    out = check_output(output_path, [c.path for c in ckpts])
    shards = merge_checkpoints(ckpts, weights, output_path=out)
    _log_weights(ckpts, weights)
    return shards


@dataclass(frozen=True)
class Scores:
    """Per candidate: its loss on the examples and its LM-Cocktail weight."""

    losses: tuple[float, ...]
    weights: tuple[float, ...]


def _score(
    paths: Sequence[PathLike],
    model_type: str,
    example_data: Sequence[Mapping[str, Any]],
    *,
    temperature: float,
    batch_size: int,
    max_input_length: int,
    neg_number: int,
    seed: int,
    mode: DecoderMode,
    device: str | torch.device,
) -> tuple[list[Checkpoint], PreTrainedModel, Binding, Scores]:
    check_model_type(model_type)
    check_examples(example_data, model_type, neg_number)
    check_temperature(temperature)
    ckpts = open_candidates(paths)
    tokenizer = load_tokenizer(ckpts[0].path)
    scorer = make_scorer(
        model_type,
        tokenizer,
        example_data,
        mode=mode,
        batch_size=batch_size,
        max_input_length=max_input_length,
        neg_number=neg_number,
        seed=seed,
    )
    model = load_model(ckpts[0].path, model_type).to(device)
    binding = bind(model, ckpts[0])
    losses = []
    for i, ckpt in enumerate(ckpts):
        if i > 0:
            binding.load(ckpt)
        losses.append(scorer.loss(model))
    scores = Scores(tuple(losses), tuple(softmax_weights(losses, temperature)))
    return ckpts, model, binding, scores


def score_models(
    model_names_or_paths: Sequence[PathLike],
    model_type: str,
    example_data: Sequence[Mapping[str, Any]],
    temperature: float = 5.0,
    batch_size: int = 2,
    max_input_length: int = 2048,
    neg_number: int = 2,
    seed: int = 0,
    *,
    mode: DecoderMode = "lmcocktail",
    device: str | torch.device = "cpu",
) -> Scores:
    """Each candidate's loss on ``example_data`` and its weight softmax(−loss / T), no merge."""
    return _score(
        _paths(model_names_or_paths),
        model_type,
        example_data,
        temperature=temperature,
        batch_size=batch_size,
        max_input_length=max_input_length,
        neg_number=neg_number,
        seed=seed,
        mode=mode,
        device=device,
    )[3]


def mix_models_with_data(
    model_names_or_paths: Sequence[PathLike],
    model_type: str,
    example_data: Sequence[Mapping[str, Any]],
    temperature: float = 5.0,
    batch_size: int = 2,
    max_input_length: int = 2048,
    neg_number: int = 2,
    output_path: PathLike | None = None,
    seed: int = 0,
    *,
    mode: DecoderMode = "lmcocktail",
    device: str | torch.device = "cpu",
) -> PreTrainedModel:
    """Weigh models by their loss on a few examples, then mix: LM-Cocktail's main function.

    Weights are softmax(−loss / ``temperature``) (:mod:`merger.cocktail.losses`
    defines the losses). Examples are ``{"input", "output"}`` for a decoder,
    ``{"query", "pos", "neg"}`` for an encoder or reranker (with at least
    ``neg_number`` negatives each, drawn with ``random.Random(seed)``).
    ``mode="lmcocktail"`` reproduces LM-Cocktail 0.0.4's decoder loss (and so
    its weights); ``"per_example"`` weighs every example equally. Scoring runs
    on ``device``; the returned model stays there.
    """
    paths = _paths(model_names_or_paths)
    check_model_type(model_type)
    check_examples(example_data, model_type, neg_number)
    out = None
    if output_path:
        out = check_output(output_path, [resolve_model_dir(p) for p in paths])
    ckpts, model, binding, scores = _score(
        paths,
        model_type,
        example_data,
        temperature=temperature,
        batch_size=batch_size,
        max_input_length=max_input_length,
        neg_number=neg_number,
        seed=seed,
        mode=mode,
        device=device,
    )
    merge_checkpoints(ckpts, scores.weights, output_path=out, binding=binding)
    _log_weights(ckpts, scores.weights)
    return model


def _log_weights(ckpts: Sequence[Checkpoint], weights: Sequence[float]) -> None:
    for ckpt, w in zip(ckpts, weights):
        log.info("weight %.6f  %s", w, ckpt.path)
