"""cache.weights.ResidentWeights: what the vLLM worker merges from (no vLLM needed here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cache.resident import load_resident_delta
from cache.weights import MergeRequest, ResidentWeights, load_order
from merger.delta import compress_delta
from merger.errors import ConfigError, IncompatibleError, NotFoundError
from merger.io import Checkpoint
from merger.materialize import MergePlan
from tests.fixtures.models import make_finetuned, make_llama


@pytest.fixture(scope="module")
def deltas(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_variants: list[Path]
) -> Path:
    root = tmp_path_factory.mktemp("resident-deltas")
    for i, v in enumerate(tiny_variants[:2]):
        compress_delta(v, tiny_llama, root / f"v{i}", name=f"v{i}", drop_rate=0.5, seed=i)
    return root


def test_base_is_read_in_load_order_and_dtype(tiny_llama: Path) -> None:
    w = ResidentWeights.from_checkpoint(tiny_llama, dtype=torch.bfloat16)
    names = list(w.base)
    assert names[0] == "model.embed_tokens.weight"
    layers = [int(n.split(".")[2]) for n in names if ".layers." in n]
    assert layers == sorted(layers) and set(layers) == {0, 1}
    assert names[-2:] == ["lm_head.weight", "model.norm.weight"]
    assert all(t.dtype == torch.bfloat16 for t in w.base.values())
    with Checkpoint(tiny_llama) as ckpt:
        assert set(names) == set(ckpt.names())
        assert torch.equal(w.base["model.norm.weight"], ckpt.get("model.norm.weight").bfloat16())
    assert w.state_bytes == sum(t.numel() * 2 for t in w.base.values())
    assert w.num_layers == 2
    assert (
        sorted(["model.layers.10.x", "model.layers.2.x"], key=load_order)[0] == "model.layers.2.x"
    )


def test_merges_equal_merge_plan_and_are_kept_once_complete(tiny_llama: Path, deltas: Path) -> None:
    w = ResidentWeights.from_checkpoint(tiny_llama, dtype=torch.float32)
    assert w.add_delta("v0", deltas / "v0") == sum(
        t.nbytes for t in load_resident_delta(deltas / "v0").values()
    )
    w.add_delta("v1", deltas / "v1")
    req = MergeRequest("ties", {"v0": 0.6, "v1": 0.4}, {"density": 0.5})
    assert MergeRequest.from_wire(req.to_wire()) == req
    plan = MergePlan.build("ties", {"v0": 0.6, "v1": 0.4}, {"density": 0.5})
    gen = w.compute(req, keep_as="k")
    first = next(gen)
    assert first[0] == "model.embed_tokens.weight" and "k" not in w.kept
    merged = dict([first, *gen])
    assert list(w.kept["k"]) == list(w.base)
    for name, base in w.base.items():
        want = plan.tensor(name, base, [w.deltas["v0"].get(name), w.deltas["v1"].get(name)])
        assert torch.equal(merged[name], want), name
        assert merged[name].data_ptr() != base.data_ptr()
    kept = w.kept_tensors("k")
    assert kept is not None and all(torch.equal(t, merged[n]) for n, t in kept)
    assert w.kept_tensors("other") is None
    assert w.drop(["k", "other"]) == 1 and not w.kept


def test_refusals_leave_the_state_alone(tiny_llama: Path, deltas: Path, models_dir: Path) -> None:
    w = ResidentWeights.from_checkpoint(tiny_llama, dtype=torch.float32)
    w.add_delta("v0", deltas / "v0")
    with pytest.raises(NotFoundError, match="not registered: ghost"):
        w.compute(MergeRequest("linear", {"v0": 0.5, "ghost": 0.5}))  # before any tensor
    with pytest.raises(ConfigError, match="no parameter 'densty'"):
        w.compute(MergeRequest("ties", {"v0": 1.0}, {"densty": 0.5}))
    wide = make_llama(models_dir / "resident-wide", seed=4, intermediate=256)
    make_finetuned(wide, models_dir / "resident-wide-ft", seed=1)
    compress_delta(models_dir / "resident-wide-ft", wide, models_dir / "resident-wide-delta")
    before = w.deltas["v0"]
    with pytest.raises(IncompatibleError, match="made for another model"):
        w.add_delta("v0", models_dir / "resident-wide-delta")
    assert w.deltas["v0"] is before
    w.remove_delta("v0")
    w.remove_delta("v0")  # removing twice is fine
    assert not w.deltas


def test_a_lora_delta_is_held_as_factors_and_merged_dense(
    tmp_path: Path, tiny_llama: Path, tiny_lora: Path, deltas: Path
) -> None:
    """The vLLM worker's path: a lowrank delta stays factors in memory, merges come out dense."""
    from merger.delta import DeltaReader, materialize
    from merger.lowrank import LowRankTensor

    compress_delta(tiny_lora, tiny_llama, tmp_path / "lora")  # auto: lowrank
    w = ResidentWeights.from_checkpoint(tiny_llama, dtype=torch.float32)
    held = w.add_delta("lora", tmp_path / "lora")
    w.add_delta("v0", deltas / "v0")
    assert {type(t) for t in w.deltas["lora"].values()} == {LowRankTensor}
    assert held == DeltaReader(tmp_path / "lora").manifest.totals.stored_bytes
    merged = dict(w.compute(MergeRequest("linear", {"lora": 1.0})))
    with Checkpoint(tiny_llama) as base:
        offline = dict(materialize(base, DeltaReader(tmp_path / "lora")))
    assert all(torch.equal(merged[n], offline[n]) for n in w.base)
    req = MergeRequest("ties", {"lora": 0.5, "v0": 0.5}, {"density": 0.5})  # a dense-input method
    plan = MergePlan.build("ties", {"lora": 0.5, "v0": 0.5}, {"density": 0.5})
    for name, t in w.compute(req):
        dense = [w.deltas[m].get(name) for m in ("lora", "v0")]
        assert torch.equal(t, plan.tensor(name, w.base[name], dense)), name
