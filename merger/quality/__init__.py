"""Merge quality: the evidence behind the gateway's defaults, measured on models that run here.

``cocktail eval`` runs it on the demo family (:mod:`merger.demo`): per-task
exact-match accuracy of the base, every variant, LM-Cocktail merges (2 models,
all variants, held-out tasks), uniform average, task arithmetic, TIES and
DARE-TIES, and DARE-compressed storage; then a Markdown report and a PNG chart.
The same evaluation through a running gateway lives in :mod:`server.quality`;
the real pretrained model (SmolLM2-135M-Instruct) in :mod:`merger.quality.smollm2`.

- :mod:`~merger.quality.config`: the knobs of one evaluation and its cache key;
- :mod:`~merger.quality.results`: rows of per-task cells, JSON round trip;
- :mod:`~merger.quality.evaluator`: one model object, weights swapped in, merges
  through :func:`merger.run_merge`, greedy exact match;
- :mod:`~merger.quality.suite`: which rows the demo-family evaluation computes;
- :mod:`~merger.quality.report` / :mod:`~merger.quality.chart`: Markdown and PNG.
"""
