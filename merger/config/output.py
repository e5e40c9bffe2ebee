"""The non-tensor files of a merged model folder: config, tokenizer, model card.

- ``config.json``: the donor's (``base_model``, else the first model), with the
  layer count set to the output's (slices change it) and, when present,
  ``layer_types`` rebuilt layer by layer from the sources; ``dtype`` (and
  ``torch_dtype`` when the donor has that older key) set to the output dtype.
- tokenizer files and ``generation_config.json``: copied from the tokenizer source.
- ``README.md``: a model card with the method, its paper and the YAML config;
  ``mergekit_config.yml``: the config itself, as mergekit writes it.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from merger.config.layers import config_num_layers
from merger.io import dtypes
from merger.methods.base import MergeMethod

TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def output_config(
    donor: dict[str, Any],
    *,
    num_layers: int,
    layer_types: list[Any] | None,
    dtype: str | None,
) -> dict[str, Any]:
    """The merged model's config.json as a dict (the donor's is not modified)."""
    out = copy.deepcopy(donor)
    found = config_num_layers(out)
    if found is not None:
        node = out
        for part in found[0][:-1]:
            node = node[part]
        node[found[0][-1]] = num_layers
        if layer_types is not None and isinstance(node.get("layer_types"), list):
            node["layer_types"] = layer_types
    if dtype is not None and dtypes.is_floating(dtype):
        out["dtype"] = dtypes.info(dtype).name
        if "torch_dtype" in out:
            out["torch_dtype"] = out["dtype"]
    return out


def copy_tokenizer(src: Path, out_dir: Path) -> list[str]:
    """Copy the tokenizer files (and generation_config.json) that ``src`` has."""
    copied = []
    for name in TOKENIZER_FILES:
        f = src / name
        if f.is_file():
            shutil.copyfile(f, out_dir / name)
            copied.append(name)
    return copied


def model_card(
    method: MergeMethod,
    yaml_text: str,
    *,
    name: str,
    base: str | None,
    models: Sequence[str],
) -> str:
    base_line = f" with `{base}` as the base" if base else ""
    bullets = "\n".join(f"* `{m}`" for m in models if m != base) or "* (none besides the base)"
    return f"""---
library_name: transformers
tags:
- merge
- cocktail
- mergekit
---
# {name}

This model is a merge of pre-trained language models, made with Cocktail's
`cocktail merge` from a mergekit-format configuration.

## Merge method

**{method.name}**{base_line}: {method.formula}

Reference: {method.paper}

## Models merged

{bullets}

## Configuration

```yaml
{yaml_text.rstrip()}
```
"""
