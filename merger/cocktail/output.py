"""The output folder of a mix: checks before writing, and the files copied beside the weights."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from merger.errors import ConfigError
from merger.io.checkpoint import PICKLE_SUFFIXES

log = logging.getLogger(__name__)

# Files holding weights in some format: never copied from the first model, since
# they would not match the merged safetensors.
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".onnx",
    ".gguf",
    ".h5",
    ".msgpack",
    ".ot",
    *PICKLE_SUFFIXES,
)


def _is_weights(path: Path) -> bool:
    name = path.name
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".safetensors.index.json")


def check_output(output_path: str | os.PathLike[str], inputs: Sequence[Path]) -> Path:
    """Check that ``output_path`` can take the merged model (the writer creates it).

    Raises:
        ConfigError: it is one of the input folders (reading and overwriting the
            same shards would corrupt both), a file, or a folder that already
            holds model weights (stale shards would mix with the new ones).
    """
    out = Path(output_path).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {str(out)!r} is a file; give a folder")
    resolved = out.resolve()
    for src in inputs:
        if src.resolve() == resolved:
            raise ConfigError(
                f"output folder {str(out)!r} is one of the input models; write to another folder"
            )
    if out.is_dir():
        stale = sorted(p.name for p in out.iterdir() if p.is_file() and _is_weights(p))
        if stale:
            raise ConfigError(
                f"output folder {str(out)!r} already holds model weights ({', '.join(stale[:3])}); "
                "choose an empty folder or remove them first"
            )
    return out


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy everything but the weights from the first model's folder: config.json,
    generation_config.json, tokenizer files, and weight-free subfolders (such as a
    sentence-transformers pooling module). Returns the names copied.

    A subfolder that holds weights of its own (e.g. a sentence-transformers Dense
    layer) is not mixed and not copied; a warning names it.
    """
    copied = []
    for item in sorted(src.iterdir()):
        if item.name.startswith("."):
            continue
        if item.is_file():
            if _is_weights(item):
                continue
            shutil.copy2(item, dst / item.name)
            copied.append(item.name)
        elif item.is_dir():
            if any(_is_weights(p) for p in item.rglob("*") if p.is_file()):
                log.warning(
                    "not copying %s: it holds weights that LM-Cocktail mixing does not cover",
                    item,
                )
                continue
            shutil.copytree(item, dst / item.name, dirs_exist_ok=True)
            copied.append(item.name + "/")
    return copied
