"""mergekit-format YAML merges: schema, parameter resolution, plan, executor.

``run_merge(config, out_dir)`` is the entry point (``cocktail merge`` calls it).
"""

from merger.config.run import run_merge

__all__ = ["run_merge"]
