"""Training loops and recipe of the demo family: layout, schedule, determinism, hashing."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from merger.demo.recipe import FULL, QUICK, ModelShape, Recipe, Schedule, recipe_hash
from merger.demo.tasks import Example, get_task
from merger.demo.tokenizer import build_char_tokenizer
from merger.demo.train import IGNORE, _lr_at, encode, finetune, init_model, llama_config, pretrain
from merger.errors import ConfigError

TINY = ModelShape(hidden=64, layers=1, heads=2, head_dim=32, intermediate=64, max_positions=64)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_encode_matches_lm_cocktail_scoring_layout(tok) -> None:
    ex = Example("cat dog =", "CAT DOG")
    ids, labels = encode(tok, ex)
    # LM-Cocktail 0.0.4: encode(input + ' ' + output) + [eos]; labels -100 over encode(input)
    expected = [*tok.encode("cat dog = CAT DOG"), tok.eos_token_id]
    n_prompt = len(tok.encode("cat dog ="))
    assert ids == expected and ids[0] == tok.bos_token_id
    assert labels == [IGNORE] * n_prompt + expected[n_prompt:]
    assert tok.decode([t for t in labels if t != IGNORE]) == " CAT DOG</s>"


def test_learning_rate_schedule() -> None:
    s = Schedule(steps=110, batch=1, lr=1.0, warmup=10)
    assert _lr_at(0, s) == pytest.approx(0.1)
    assert _lr_at(9, s) == pytest.approx(1.0)
    assert _lr_at(10, s) == pytest.approx(1.0)
    assert _lr_at(60, s) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert _lr_at(109, s) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.99)))


def test_head_dim_must_suit_vllm_cpu(tok) -> None:
    with pytest.raises(ConfigError, match="head_dim must be 32 or 64"):
        llama_config(ModelShape(hidden=96, heads=2, head_dim=48), tok)
    config = llama_config(FULL.shape, tok)
    assert (config.head_dim, config.num_attention_heads, config.hidden_size) == (32, 3, 96)
    assert config.vocab_size == len(tok) and not config.tie_word_embeddings


def _tiny_run(tok) -> tuple[dict[str, torch.Tensor], list[float], list[float]]:
    torch.set_num_threads(1)
    model = init_model(llama_config(TINY, tok), seed=0)
    examples = get_task("uppercase").examples(16, seed=0)
    corpus = "Return the sum of a and b. " * 40
    pre = pretrain(
        model, tok, corpus, examples, Schedule(steps=3, batch=4, lr=3e-3, warmup=1),
        seq_len=32, task_share=0.25, seed=1,
    )  # fmt: skip
    ft = finetune(model, tok, examples, Schedule(steps=8, batch=8, lr=1e-2, warmup=1), seed=2)
    return {k: v.clone() for k, v in model.state_dict().items()}, pre, ft


def test_training_is_deterministic_and_learns(tok) -> None:
    state1, pre1, ft1 = _tiny_run(tok)
    state2, pre2, ft2 = _tiny_run(tok)
    assert pre1 == pre2 and ft1 == ft2
    assert all(torch.equal(state1[k], state2[k]) for k in state1)
    assert ft1[-1] < ft1[0] - 1.0  # 8 steps on 16 examples: the answers are being learnt


def test_training_refuses_bad_input(tok) -> None:
    model = init_model(llama_config(TINY, tok), seed=0)
    s = Schedule(steps=1, batch=2, lr=1e-3)
    with pytest.raises(ConfigError, match="task_share must be in"):
        pretrain(model, tok, "x" * 100, [], s, seq_len=16, task_share=1.5, seed=0)
    with pytest.raises(ConfigError, match="pretraining needs >= 64"):
        pretrain(model, tok, "short", [], s, seq_len=64, task_share=0.0, seed=0)
    with pytest.raises(ConfigError, match="at least one example"):
        finetune(model, tok, [], s, seed=0)
    with pytest.raises(ValidationError):
        Schedule(steps=0, batch=2, lr=1e-3)


def test_recipe_hash_tracks_every_field() -> None:
    assert recipe_hash(FULL) == recipe_hash(Recipe())
    assert recipe_hash(FULL) != recipe_hash(QUICK)
    assert recipe_hash(FULL) != recipe_hash(FULL.model_copy(update={"seed": 1}))
    deeper = FULL.model_copy(update={"finetune": FULL.finetune.model_copy(update={"steps": 101})})
    assert recipe_hash(FULL) != recipe_hash(deeper)
    assert len(set(FULL.seeds().values())) == len(FULL.seeds())


def test_recipe_refuses_unknown_keys_and_tasks() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Recipe(sed=1)
    with pytest.raises(ValidationError, match="tasks must be distinct names"):
        Recipe(tasks=("uppercase", "reverse"))
    with pytest.raises(ValidationError, match="tasks must be distinct names"):
        Recipe(tasks=("uppercase", "uppercase"))
