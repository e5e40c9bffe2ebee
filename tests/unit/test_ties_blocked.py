"""TIES and DARE-TIES in cache-sized blocks equal the whole-tensor formulas.

The oracle below is the maths of :mod:`merger.methods.taskvec` written out over
whole tensors, independently of the blocked code: the DARE mask of the whole
tensor at once (:func:`merger.hashmask.random_keep_mask`), TIES' trim by a
stable sort (largest |δ| first, ties to the lowest index), then weight, elect,
combine and apply. Its operations per element are those the implementation
documents, in the same order (the blocked code may only start the sign score
from δ₁ instead of from 0, which changes nothing but the sign of a zero score,
and zeros of either sign elect +), so float32 results must be equal bit for bit.
Half-precision inputs are converted to float32 per block: their results are
compared with a tolerance of one rounding of the output.

Blocks are small here (``block=``) so that a test tensor spans several blocks
with a short last one; some block sizes are not multiples of the 2^16-element
mask chunks, so a chunk straddles two blocks.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from merger.hashmask import random_keep_mask
from merger.methods import MergeInputs, TensorContext
from merger.methods.blocks import BLOCK
from merger.methods.taskvec import (
    Sparsifier,
    apply,
    sparsified_deltas,
    ties_combine,
    ties_merge,
)
from tests.unit._methods import run

CHUNK = 1 << 16  # merger.hashmask's mask chunk
N = 3 * CHUNK + 4321  # several blocks of CHUNK and a short last one
SEED, NAME = 7, "layers.0.w"
WEIGHTS = (0.5, -0.5, 0.25)  # + -0.5 cancels 0.5: mergekit's divisor Σ mᵢwᵢ hits 0
DENSITIES = {"lt1": (0.5, 0.6, 0.7), "mixed": (0.3, 1.0, 0.9)}


def _models(
    n: int, dtype: torch.dtype = torch.float32, *, ties: bool = False, seed: int = 0
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    if ties:  # small integer deltas: thousands of |δ| tie at any threshold
        deltas = [torch.randint(-5, 6, (n,), generator=g).float() for _ in range(3)]
    else:
        deltas = [torch.randn(n, generator=g) * 0.1 for _ in range(3)]
        deltas[1][::7] = 0.0  # exact zero deltas: never agree, never vote
    return base.to(dtype), [(base + d).to(dtype) for d in deltas]


def _oracle(
    base: torch.Tensor,
    models: list[torch.Tensor],
    weights: tuple[float, ...],
    densities: tuple[float, ...],
    *,
    strategy: str,
    rescale: bool | str,
    majority_sign: str,
    semantics: str,
    normalize: bool,
    lam: float,
) -> torch.Tensor:
    work = torch.float64 if base.dtype == torch.float64 else torch.float32
    b = base.to(work)
    n = b.numel()
    trimmed = []
    for i, (theta, d) in enumerate(zip(models, densities, strict=True)):
        delta = theta.to(work) - b
        if d < 1.0 and strategy == "random":
            x = delta.float()  # DARE is float32 maths whatever the work dtype
            kept = x * random_keep_mask(SEED, f"{i}:{NAME}", n, d)
            if rescale is True:
                kept = kept / d
            elif rescale == "l1":
                before, after = x.abs().sum(), kept.abs().sum()
                if before >= 1e-7 and after >= 1e-7:
                    kept = kept * (before / after)
            delta = kept.to(work)
        elif d < 1.0:
            k = max(1, int(d * n))
            if k < n:
                order = torch.sort(-delta.abs(), stable=True).indices  # |δ| desc, then index
                keep = torch.zeros(n, dtype=torch.bool)
                keep[order[:k]] = True
                kept = delta * keep
                if rescale is True:
                    kept = kept / d
                elif rescale == "l1":
                    before, after = float(delta.abs().sum()), float(kept.abs().sum())
                    if before >= 1e-7 and after >= 1e-7:
                        kept = kept * (before / after)
                delta = kept
        trimmed.append(delta)
    ds = [t * w for t, w in zip(trimmed, weights)] if semantics == "mergekit" else trimmed
    score = torch.zeros_like(b)
    for x in ds:
        score = score + (x if majority_sign == "total" else torch.sign(x))
    sign = torch.where(score >= 0, 1.0, -1.0).to(work)
    merged, divisor = torch.zeros_like(b), torch.zeros_like(b)
    for x, w in zip(ds, weights):
        agree = (x * sign > 0).to(work)
        if semantics == "mergekit":
            merged = merged + x * agree
            divisor = divisor + agree * w
        else:
            merged = merged + (w * x) * agree
            divisor = divisor + agree
    if semantics == "paper":
        merged = merged / torch.clamp(divisor, min=1)
    elif normalize:
        merged = merged / torch.where(divisor == 0, 1.0, divisor).to(work)
    if lam != 1.0:
        merged = merged * lam
    return (merged + b).to(base.dtype)


def _blocked(
    base: torch.Tensor, models: list[torch.Tensor], densities: tuple[float, ...], **kw: object
) -> torch.Tensor:
    block = kw.pop("block", CHUNK)
    return ties_merge(
        MergeInputs(tensors=models, base=base),
        base,
        WEIGHTS,
        densities,
        ctx=TensorContext(NAME, seed=SEED),
        block=block,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


OPTIONS = [
    {"semantics": s, "majority_sign": m, "rescale": r, "normalize": nz, "lam": 0.7}
    for s, m, r, nz in itertools.product(
        ("mergekit", "paper"), ("total", "frequency"), (True, False, "l1"), (True, False)
    )
    if not (s == "paper" and not nz)  # normalize does not apply to paper
]


def _id(o: dict) -> str:
    return "-".join(str(v) for v in o.values())


@pytest.mark.parametrize("strategy", ["random", "magnitude"])
@pytest.mark.parametrize("dens", sorted(DENSITIES))
@pytest.mark.parametrize("options", OPTIONS, ids=_id)
def test_float32_is_the_whole_tensor_formula_bit_for_bit(
    strategy: str, dens: str, options: dict
) -> None:
    base, models = _models(N)
    want = _oracle(base, models, WEIGHTS, DENSITIES[dens], strategy=strategy, **options)
    got = _blocked(base, models, DENSITIES[dens], strategy=strategy, **options)
    assert got.dtype == torch.float32 and got.shape == base.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("block", [40_000, CHUNK + 1, 100_003, 3 * CHUNK])
@pytest.mark.parametrize("lam", [1.0, 1.3])
def test_dare_masks_line_up_with_any_block_size(block: int, lam: float) -> None:
    # blocks that are not multiples of the mask chunks: a chunk straddles two blocks
    base, models = _models(N, seed=1)
    opts = {"semantics": "mergekit", "majority_sign": "total", "rescale": True}
    want = _oracle(
        base, models, WEIGHTS, (0.3, 0.5, 0.9), strategy="random", normalize=False, lam=lam, **opts
    )
    got = _blocked(
        base,
        models,
        (0.3, 0.5, 0.9),
        strategy="random",
        normalize=False,
        lam=lam,
        block=block,
        **opts,
    )
    assert torch.equal(got, want)


def test_a_shifted_mask_is_caught() -> None:
    # guards the oracle itself: the mask of another block (here shifted by one chunk)
    # gives other numbers, so a wrong block offset cannot pass the tests above
    base, models = _models(N, seed=2)
    kw = {"strategy": "random", "rescale": True, "majority_sign": "total"}
    got = _blocked(
        base, models, (0.5, 0.5, 0.5), semantics="mergekit", normalize=False, lam=1.0, **kw
    )
    shifted = [torch.cat([m[CHUNK:], m[:CHUNK]]) for m in models]
    b2 = torch.cat([base[CHUNK:], base[:CHUNK]])
    wrong = _oracle(
        b2, shifted, WEIGHTS, (0.5, 0.5, 0.5), semantics="mergekit", normalize=False, lam=1.0, **kw
    )
    assert not torch.equal(torch.cat([got[CHUNK:], got[:CHUNK]]), wrong)


@pytest.mark.parametrize("rescale", [True, False, "l1"])
@pytest.mark.parametrize("n", [N, 300_007])  # 300_007: kth_largest's sampled path
def test_trim_ties_are_broken_towards_the_lowest_index_across_blocks(
    rescale: bool | str, n: int
) -> None:
    base, models = _models(n, ties=True, seed=3)
    for dens in ((0.3, 0.55, 0.8), (0.5, 1.0, 0.25)):
        opts = {"semantics": "mergekit", "majority_sign": "total", "normalize": True, "lam": 1.0}
        want = _oracle(base, models, WEIGHTS, dens, strategy="magnitude", rescale=rescale, **opts)
        got = _blocked(base, models, dens, strategy="magnitude", rescale=rescale, **opts)
        assert torch.equal(got, want)


def test_trim_cutoff_falls_inside_a_later_block() -> None:
    # |δ| = 1 everywhere but a few larger ones: the k kept are the larger ones and the
    # first k - (larger) of the ties, so the cutoff lies in the middle of block 2
    n = 3 * CHUNK + 99
    base = torch.zeros(n)
    d = torch.ones(n)
    d[::1000] = 2.0
    k = int(0.4 * n)
    sp = Sparsifier(
        d, base, 0.4, strategy="magnitude", rescale=False, seed=0, name="w", dtype=torch.float32
    )
    assert CHUNK < sp.cutoff < 2 * CHUNK
    out = torch.empty(n)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        sp.fill(base[start:stop], start, out[start:stop])
    assert int(out.count_nonzero()) == k
    assert torch.equal(out[: sp.cutoff], d[: sp.cutoff])
    assert torch.equal(out[sp.cutoff :], torch.where(d[sp.cutoff :] > 1, d[sp.cutoff :], 0.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("strategy", ["random", "magnitude"])
@pytest.mark.parametrize("rescale", [True, "l1"])
def test_other_dtypes_match_the_formula(
    dtype: torch.dtype, strategy: str, rescale: bool | str
) -> None:
    base, models = _models(N, dtype, seed=4)
    for semantics in ("mergekit", "paper"):
        opts = {"semantics": semantics, "majority_sign": "total", "normalize": True, "lam": 0.7}
        dens = DENSITIES["mixed"]
        want = _oracle(base, models, WEIGHTS, dens, strategy=strategy, rescale=rescale, **opts)
        got = _blocked(base, models, dens, strategy=strategy, rescale=rescale, **opts)
        assert got.dtype == dtype
        eps = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-12
        assert torch.allclose(got.double(), want.double(), rtol=eps, atol=eps)


@pytest.mark.parametrize("strategy", ["random", "magnitude"])
@pytest.mark.parametrize("rescale", [True, False, "l1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_blocks_equal_the_whole_tensor_helpers(
    strategy: str, rescale: bool | str, dtype: torch.dtype
) -> None:
    # sparsified_deltas (through merger.dare's sparsifiers) + ties_combine + apply: the
    # whole-tensor path the blocked one replaces, kept for other callers
    base, models = _models(N, dtype, seed=5)
    dens = DENSITIES["lt1"]
    ctx = TensorContext(NAME, seed=SEED)
    inputs = MergeInputs(tensors=models, base=base)
    for semantics, majority in (("mergekit", "frequency"), ("paper", "total")):
        deltas = sparsified_deltas(inputs, base, dens, strategy=strategy, rescale=rescale, ctx=ctx)  # type: ignore[arg-type]
        merged = ties_combine(
            deltas,
            WEIGHTS,
            majority_sign=majority,
            semantics=semantics,  # type: ignore[arg-type]
            normalize=True,
        )
        want = apply(base, merged, 0.7)
        got = _blocked(
            base,
            models,
            dens,
            strategy=strategy,
            rescale=rescale,
            majority_sign=majority,
            semantics=semantics,
            normalize=True,
            lam=0.7,
        )
        assert torch.equal(got, want)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_the_methods_run_in_blocks(method: str) -> None:
    # through the registry with the default block size: two blocks and a short third
    n = 2 * BLOCK + 123
    base, models = _models(n, seed=6)
    mps = [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES["lt1"])]
    params = {"lambda": 0.9, "majority_sign": "frequency"}
    got = run(method, models, base, params, mps, tensor_name=NAME, seed=SEED)
    strategy = "random" if method == "dare_ties" else "magnitude"
    want = _oracle(
        base,
        models,
        WEIGHTS,
        DENSITIES["lt1"],
        strategy=strategy,
        rescale=method == "dare_ties",
        majority_sign="frequency",
        semantics="mergekit",
        normalize=method == "ties",
        lam=0.9,
    )
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape", [(0,), (), (3, 5), (7, 0)])
def test_tiny_and_empty_tensors(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(8)
    base = torch.randn(shape, generator=g)
    models = [base + torch.randn(shape, generator=g) for _ in range(3)]
    for strategy in ("random", "magnitude"):
        opts = {"semantics": "mergekit", "majority_sign": "total", "normalize": True, "lam": 1.0}
        got = _blocked(base, models, (0.5, 0.5, 1.0), strategy=strategy, rescale=True, **opts)
        flat = _oracle(
            base.reshape(-1),
            [m.reshape(-1) for m in models],
            WEIGHTS,
            (0.5, 0.5, 1.0),
            strategy=strategy,
            rescale=True,
            **opts,
        )
        assert got.shape == base.shape and torch.equal(got.reshape(-1), flat)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", ["random", "magnitude"])
def test_on_a_gpu_the_whole_tensor_is_one_block(strategy: str) -> None:
    base, models = _models(N, seed=9)
    opts = {"semantics": "mergekit", "majority_sign": "total", "normalize": True, "lam": 0.7}
    cpu = _blocked(base, models, DENSITIES["lt1"], strategy=strategy, rescale=True, **opts)
    gpu = _blocked(
        base.cuda(),
        [m.cuda() for m in models],
        DENSITIES["lt1"],
        strategy=strategy,
        rescale=True,
        **opts,
    )
    assert gpu.device.type == "cuda"
    # same masks and selection; GPU kernels may round division differently
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-6, atol=1e-7)
