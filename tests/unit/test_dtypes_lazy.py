"""dtype codes without torch, the lazy torch binding, and NumPy reads/writes of checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from merger.errors import ConfigError
from merger.io import Checkpoint, ShardedWriter, TensorSpec, dtypes
from merger.lazy import TorchDtypes, lazy_module, loaded

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "given,code",
    [
        ("F32", "F32"),
        ("float32", "F32"),
        ("fp16", "F16"),
        ("torch.bfloat16", "BF16"),
        (torch.float64, "F64"),
        (torch.int64, "I64"),
        (torch.bool, "BOOL"),
        (torch.uint16, "U16"),
        (np.float16, "F16"),
        (np.dtype("int8"), "I8"),
    ],
)
def test_code_of_every_spelling(given: object, code: str) -> None:
    assert dtypes.code_of(given) == code


def test_codes_agree_with_torch_and_numpy() -> None:
    for code, d in dtypes.DTYPES.items():
        t = dtypes.to_torch(code)
        assert t.itemsize == d.itemsize and t.is_floating_point == d.floating
        assert dtypes.code_of(t) == code
        n = dtypes.to_numpy(code)
        if code == "BF16":
            assert n is None
        else:
            assert n is not None and n.itemsize == d.itemsize
    for a in ("F16", "BF16", "F32", "F64"):
        for b in ("F16", "BF16", "F32", "F64"):
            want = torch.promote_types(dtypes.to_torch(a), dtypes.to_torch(b))
            assert dtypes.promote(a, b) == dtypes.code_of(want), (a, b)
    with pytest.raises(ValueError, match="unsupported dtype"):
        dtypes.code_of("complex64")
    with pytest.raises(ValueError, match="unknown safetensors dtype"):
        dtypes.itemsize("F8_E4M3")


def test_torch_dtypes_table_resolves_on_read() -> None:
    table = TorchDtypes({"a": "float16", 8: "uint8"})
    assert list(table) == ["a", 8] and len(table) == 2
    assert table["a"] is torch.float16 and table[8] is torch.uint8
    assert lazy_module("torch") is torch and loaded("torch")


def test_merge_core_imports_without_loading_torch() -> None:
    """Importing what `cocktail merge` imports must not load torch (it costs ~0.7 s);
    on failure the output names the module whose import loaded it."""
    code = (
        "import sys, traceback\n"
        "def hook(frame, event, arg):\n"
        "    if event == 'call' and frame.f_code.co_name == '<module>' and "
        "frame.f_code.co_filename.endswith('torch/__init__.py'):\n"
        "        traceback.print_stack(frame.f_back)\n"
        "        sys.setprofile(None)\n"
        "sys.setprofile(hook)\n"
        "import merger.config.run, merger.config.arrays, server.cli\n"
        "from server.cli import build_parser\n"
        "build_parser()\n"
        "from merger.lazy import loaded\n"
        "print('loaded', loaded('torch'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "loaded False" in done.stdout, done.stderr[-3000:]


def test_get_array_reads_what_get_reads(tmp_path: Path) -> None:
    ts = {
        "w": torch.randn(5, 7),
        "h": torch.randn(3).half(),
        "d": torch.randn(2, 2, dtype=torch.float64),
        "i": torch.arange(4),
        "b": torch.randn(3).bfloat16(),
    }
    save_file(ts, str(tmp_path / "model.safetensors"))
    with Checkpoint(tmp_path) as ck:
        for name in ("w", "h", "d", "i"):
            a = ck.get_array(name)
            assert not a.flags.writeable
            np.testing.assert_array_equal(a, ts[name].numpy())
            assert ck.info(name).code == dtypes.code_of(a.dtype)
        with pytest.raises(ValueError, match="NumPy cannot hold"):
            ck.get_array("b")


def test_writer_takes_numpy_arrays_and_checks_them(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    h = np.ones(5, dtype=np.float16)
    specs = [TensorSpec("a", (3, 4), "F32"), TensorSpec("h", (5,), torch.float16)]
    assert specs[1].dtype == "F16" and specs[1].torch_dtype is torch.float16
    w = ShardedWriter(tmp_path, specs)
    with pytest.raises(ConfigError, match="the plan says"):
        w.write("a", a.astype(np.float64))
    w.write("a", a)
    w.write("h", torch.from_numpy(h))  # torch tensors and arrays mix
    w.close()
    back = load_file(str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(back["a"].numpy(), a)
    assert back["h"].dtype == torch.float16
