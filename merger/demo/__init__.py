"""The demo's small model family: a char-level Llama base and one variant per string task.

``tokenizer`` (char tokenizer), ``tasks`` (seeded task generators and answers),
``corpus`` (standard-library docstrings), ``train`` (torch loops), ``evaluate``
(greedy exact match on any causal LM), ``recipe`` (the knobs and their hash),
``family`` (train and score in memory), ``store`` (folders, manifest, cache).
Entry point: ``cocktail demo-family OUT``.
"""
