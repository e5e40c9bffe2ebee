"""LM-Cocktail: weigh candidate models by their loss on a few examples, then mix them.

- :mod:`merger.cocktail.weights`: softmax(−loss / T), dropping negligible weights.
- :mod:`merger.cocktail.losses`: decoder / encoder / reranker losses on examples.
- :mod:`merger.cocktail.mix`: LM-Cocktail's drop-in API (``mix_models``,
  ``mix_models_with_data``, ``mix_models_by_layers``) over local model folders.
"""
