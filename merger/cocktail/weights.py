"""From candidate losses to merge weights, and checks on user-given weights.

LM-Cocktail (Xiao et al. 2023, https://arxiv.org/abs/2311.13534) weighs each
candidate model by how well it fits a few examples of the target task:

    wᵢ = softmax(−Lᵢ / T)ᵢ = exp(−Lᵢ / T) / Σⱼ exp(−Lⱼ / T)

A lower loss gets a larger weight; the temperature T sets how sharp the choice
is (T → 0 picks the best model alone, T → ∞ gives the plain average). LM-Cocktail's
default is T = 5. Everything here is computed in float64 (LM-Cocktail uses
float32; the two differ by about 1e-7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from merger.errors import ConfigError

# How far from 1 the sum of user-given mixing weights may be.
WEIGHT_SUM_TOLERANCE = 1e-3


def softmax_weights(losses: Sequence[float], temperature: float = 5.0) -> list[float]:
    """LM-Cocktail weights ``softmax(−loss / temperature)``, one per loss, summing to 1.

    Args:
        losses: one finite mean loss per candidate model (nats per token).
        temperature: T > 0; larger spreads the weights, smaller concentrates them.

    Raises:
        ConfigError: no losses, a loss that is NaN or infinite, or T not a positive number.
    """
    if not losses:
        raise ConfigError("softmax_weights needs at least one loss; got an empty list")
    check_temperature(temperature)
    bad = [i for i, x in enumerate(losses) if not math.isfinite(float(x))]
    if bad:
        raise ConfigError(
            f"losses must be finite; candidate(s) {bad} have {[losses[i] for i in bad]} "
            "(a model that produces NaN or infinite loss on the examples cannot be weighed; "
            "check its weights or remove it)"
        )
    logits = [-float(x) / temperature for x in losses]
    top = max(logits)
    exps = [math.exp(z - top) for z in logits]
    total = math.fsum(exps)
    return [e / total for e in exps]


def check_temperature(temperature: float) -> None:
    """Raise a ConfigError unless ``temperature`` is a finite number > 0."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
    ):
        raise ConfigError(f"temperature must be a finite number > 0; got {temperature!r}")
    if temperature <= 0:
        raise ConfigError(
            f"temperature must be > 0; got {temperature} (the weights are softmax(-loss / "
            "temperature); use a small value such as 0.1 to favour the best model strongly)"
        )


def drop_small_weights(weights: Sequence[float], threshold: float) -> list[float]:
    """Set weights below ``threshold`` to 0 and rescale the rest to sum to 1.

    The largest weight always survives (if every weight is below the threshold,
    the result is 1 for the largest and 0 elsewhere; ties keep the first), so
    the result is a valid mixture. ``threshold = 0`` only renormalizes.

    Args:
        weights: non-negative, finite, with a positive sum (softmax output, typically).
        threshold: in [0, 1).

    Returns:
        A list as long as ``weights``, non-negative, summing to 1.
    """
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold < 1.0):
        raise ConfigError(
            f"threshold must be in [0, 1); got {threshold!r} (a threshold of 1 would drop "
            "every model)"
        )
    if not weights:
        raise ConfigError("drop_small_weights needs at least one weight; got an empty list")
    values = [float(w) for w in weights]
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise ConfigError(f"weights must be finite and >= 0; got {values}")
    if math.fsum(values) <= 0:
        raise ConfigError(f"weights must have a positive sum; got {values}")
    best = max(range(len(values)), key=lambda i: values[i])
    kept = [w if (w >= threshold or i == best) else 0.0 for i, w in enumerate(values)]
    total = math.fsum(kept)
    return [w / total for w in kept]


def check_mix_weights(weights: Sequence[float], n_models: int) -> list[float]:
    """Validate user-given mixing weights for ``mix_models``; returns them as floats.

    The weights are used as given (not renormalized), as LM-Cocktail does. They
    must be one per model, finite, and sum to 1 within ``WEIGHT_SUM_TOLERANCE``.
    LM-Cocktail 0.0.4 checks ``sum(weights) - 1 <= 1e-3``, which accepts any sum
    below 1 (0.5, or even negative sums); we check ``|sum - 1| <= 1e-3``.
    Negative weights are allowed (extrapolation), as there.
    """
    if n_models < 1:
        raise ConfigError("give at least one model to mix")
    if len(weights) != n_models:
        raise ConfigError(
            f"got {n_models} model(s) but {len(weights)} weight(s); give one weight per model"
        )
    values = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"weight {i} must be a finite number; got {w!r}")
        values.append(float(w))
    total = math.fsum(values)
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        hint = f"; divide each by {total:.6g} to mix in the same proportions" if total > 0 else ""
        raise ConfigError(
            f"the weights must sum to 1 (within {WEIGHT_SUM_TOLERANCE}); they sum to {total:.6g}"
            + hint
        )
    return values
