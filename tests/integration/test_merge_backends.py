"""`cocktail merge --backend`: element-wise merges on NumPy without loading torch.

``auto`` (the default) runs linear, task arithmetic, SLERP and passthrough on NumPy when
every tensor is float16/32/64 on the CPU; the process then never imports torch,
which is most of a small merge's wall time. Everything else runs on torch.
Both give the same model to float rounding.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from merger.config import run_merge
from merger.errors import ConfigError
from merger.io import Checkpoint
from tests.fixtures.models import make_finetuned, make_llama

REPO = Path(__file__).resolve().parents[2]


def write(tmp: Path, name: str, config: dict[str, Any]) -> Path:
    cfg = tmp / f"{name}.yml"
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def element_wise(base: Path, v: list[Path]) -> dict[str, dict[str, Any]]:
    b, a0, a1 = str(base), str(v[0]), str(v[1])
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": m, "parameters": {"weight": w}} for m, w in ((b, 1), (a0, 2), (a1, 1))
            ],
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": b,
            "models": [
                {"model": m, "parameters": {"weight": w}} for m, w in ((a0, 0.7), (a1, -0.2))
            ],
            "parameters": {"lambda": 0.9},
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": b,
            "models": [{"model": a0}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0.1, 0.9]}, {"value": 0.4}]},
        },
        "passthrough": {  # a frankenmerge, the duplicated layer's o_proj scaled down
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": b, "layer_range": [0, 2]}]},
                {
                    "sources": [
                        {
                            "model": a0,
                            "layer_range": [1, 2],
                            "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}]},
                        }
                    ]
                },
            ],
        },
    }


def cocktail_merge(cfg: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`cocktail merge` in a fresh interpreter; prints whether torch got loaded."""
    code = textwrap.dedent(
        f"""
        from server.cli import build_parser, dispatch
        from merger.lazy import loaded
        args = build_parser().parse_args(["merge", {str(cfg)!r}, {str(out)!r}, "--no-progress", *{list(args)!r}])
        rc = dispatch(args)
        print("torch loaded:", loaded("torch"))
        raise SystemExit(rc)
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def tensors(folder: Path) -> dict[str, np.ndarray]:
    with Checkpoint(folder) as ck:
        return {n: ck.get(n).float().numpy() for n in ck.names()}


def same_tensors(a: Path, b: Path) -> None:
    """The two folders hold the same tensor names, equal to float rounding."""
    got, want = tensors(a), tensors(b)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "slerp", "passthrough"])
def test_auto_runs_on_numpy_without_torch_and_matches_torch(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path], method: str
) -> None:
    cfg = write(tmp_path, method, element_wise(tiny_llama, tiny_variants)[method])
    on_numpy, on_torch = tmp_path / "numpy" / "out", tmp_path / "torch" / "out"
    done = cocktail_merge(cfg, on_numpy)
    assert done.returncode == 0, done.stderr
    assert "torch loaded: False" in done.stdout, done.stdout + done.stderr
    assert "(on numpy)" in done.stderr
    run_merge(cfg, on_torch, progress=False, backend="torch")
    same_tensors(on_numpy, on_torch)
    # the same files otherwise: config, tokenizer, model card
    for f in ("config.json", "tokenizer_config.json", "README.md", "mergekit_config.yml"):
        assert (on_numpy / f).read_bytes() == (on_torch / f).read_bytes()
    model = AutoModelForCausalLM.from_pretrained(on_numpy)
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_methods_without_an_array_fn_run_on_torch(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    cfg = write(
        tmp_path,
        "ties",
        {
            "merge_method": "ties",
            "base_model": str(tiny_llama),
            "models": [
                {"model": str(v), "parameters": {"weight": 0.5, "density": 0.5}}
                for v in tiny_variants[:2]
            ],
        },
    )
    done = cocktail_merge(cfg, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "torch loaded: True" in done.stdout and "(on torch)" in done.stderr
    with pytest.raises(ConfigError, match=r"'ties' runs on torch only.*--backend auto"):
        run_merge(cfg, tmp_path / "forced", progress=False, backend="numpy")
    assert not (tmp_path / "forced").exists()  # refused before anything was written


def test_bfloat16_models_run_on_torch(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    base = make_llama(tmp_path / "base", seed=0, dtype=torch.bfloat16)
    fts = [make_finetuned(base, tmp_path / f"ft{i}", seed=i) for i in (1, 2)]
    cfg = write(tmp_path, "lin", element_wise(base, fts)["linear"])
    done = cocktail_merge(cfg, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "(on torch)" in done.stderr
    with pytest.raises(ConfigError, match="bfloat16, which NumPy does not have"):
        run_merge(cfg, tmp_path / "forced", progress=False, backend="numpy")
    # a float32 family asked for bfloat16 output cannot use NumPy either
    cfg32 = write(
        tmp_path,
        "lin32",
        {**element_wise(tiny_llama, tiny_variants)["linear"], "out_dtype": "bf16"},
    )
    with pytest.raises(ConfigError, match="bfloat16"):
        run_merge(cfg32, tmp_path / "forced", progress=False, backend="numpy")


def test_numpy_backend_converts_dtypes_as_torch_does(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    cfg = write(
        tmp_path,
        "half",
        {**element_wise(tiny_llama, tiny_variants)["task_arithmetic"], "dtype": "float16"},
    )
    run_merge(cfg, tmp_path / "numpy", progress=False, backend="numpy", dtype="float32")
    run_merge(cfg, tmp_path / "torch", progress=False, backend="torch", dtype="float32")
    with Checkpoint(tmp_path / "numpy") as ck:
        assert {ck.info(n).code for n in ck.names()} == {"F32"}
    same_tensors(tmp_path / "numpy", tmp_path / "torch")


def test_unknown_backend_is_refused(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    cfg = write(tmp_path, "lin", element_wise(tiny_llama, tiny_variants)["linear"])
    with pytest.raises(ConfigError, match="backend must be one of auto, torch, numpy"):
        run_merge(cfg, tmp_path / "out", progress=False, backend="jax")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_integer_buffers_are_copied_or_refused_on_both_backends(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path], backend: str
) -> None:
    from safetensors.numpy import save_file

    from merger.errors import IncompatibleError

    folders = []
    for i, src in enumerate((tiny_llama, tiny_variants[0])):
        dst = tmp_path / f"m{i}"
        shutil.copytree(src, dst)
        save_file({"model.step": np.array([7, 8], dtype=np.int64)}, str(dst / "extra.safetensors"))
        folders.append(dst)
    models = [{"model": str(f), "parameters": {"weight": 0.5}} for f in folders]
    cfg = write(tmp_path, "lin", {"merge_method": "linear", "models": models})
    out = run_merge(cfg, tmp_path / "out", progress=False, backend=backend)
    with Checkpoint(out) as ck:
        assert ck.info("model.step").code == "I64"
        np.testing.assert_array_equal(ck.get("model.step").numpy(), [7, 8])
    save_file(
        {"model.step": np.array([7, 9], dtype=np.int64)}, str(folders[1] / "extra.safetensors")
    )
    with pytest.raises(IncompatibleError, match=r"'model\.step' differs between inputs"):
        run_merge(cfg, tmp_path / "out2", progress=False, backend=backend)
