"""The demo's string tasks: reference answers, seeded generators, held-out split."""

from __future__ import annotations

import pytest

from merger.demo.tasks import (
    ALL_TASKS,
    DELIMITER,
    FRENCH,
    GERMAN,
    WORDS,
    Example,
    Task,
    get_task,
    in_eval_split,
)
from merger.demo.tokenizer import build_char_tokenizer
from merger.errors import ConfigError

TASKS = list(ALL_TASKS)


@pytest.mark.parametrize(
    ("task", "text", "answer"),
    [
        ("uppercase", "cat dog =", "CAT DOG"),
        ("capitalize", "hello new world =", "Hello New World"),
        ("digits_en", "4071 =", "four zero seven one"),
        ("digits_fr", "4071 =", "quatre zero sept un"),
        ("translate_fr", "cat red sea =", "chat rouge mer"),
        ("translate_de", "man old day =", "mann alt tag"),
        ("caesar", "zoo cat =", "app dbu"),
    ],
)
def test_reference_answers(task: str, text: str, answer: str) -> None:
    assert get_task(task).answer(text) == answer


def test_at_least_five_tasks_with_descriptions() -> None:
    assert len(ALL_TASKS) >= 5
    for name, task in ALL_TASKS.items():
        assert task.name == name and task.description


@pytest.mark.parametrize("name", TASKS)
def test_examples_are_seeded_and_answered(name: str) -> None:
    task = get_task(name)
    first = task.examples(50, seed=3)
    assert first == task.examples(50, seed=3)
    assert first != task.examples(50, seed=4)
    assert len(first) == 50
    for ex in first:
        assert ex.input.endswith(DELIMITER)
        assert ex.output == task.answer(ex.input)
        assert ex.text() == f"{ex.input} {ex.output}"


@pytest.mark.parametrize("name", TASKS)
def test_eval_set_is_held_out(name: str) -> None:
    task = get_task(name)
    held_out = task.eval_set(100)
    inputs = [e.input for e in held_out]
    assert len(set(inputs)) == 100  # distinct
    assert all(in_eval_split(i) for i in inputs)
    assert task.eval_set(40) == held_out[:40]  # a prefix of one fixed sequence
    for seed in range(3):
        training = {e.input for e in task.examples(2000, seed)}
        assert not training & set(inputs)
        assert not any(in_eval_split(i) for i in training)


def test_eval_split_is_about_a_fifth() -> None:
    inputs = [f"{a} {b}{DELIMITER}" for a in WORDS for b in WORDS]
    share = sum(in_eval_split(i) for i in inputs) / len(inputs)
    assert abs(share - 51 / 256) < 0.03  # first SHA-256 byte below int(0.2 * 256) = 51


def test_translations_use_disjoint_word_lists_inside_the_shared_vocabulary() -> None:
    assert not set(FRENCH) & set(GERMAN)
    assert set(FRENCH) | set(GERMAN) <= set(WORDS)
    assert all(src != dst for table in (FRENCH, GERMAN) for src, dst in table.items())


def test_a_bare_prompt_is_ambiguous_between_tasks() -> None:
    answers = {n: get_task(n).answer("cat dog =") for n in ("uppercase", "capitalize", "caesar")}
    answers["translate_fr"] = get_task("translate_fr").answer("cat dog =")
    assert len(set(answers.values())) == 4
    assert get_task("digits_en").answer("12 =") != get_task("digits_fr").answer("12 =")


@pytest.mark.parametrize("name", TASKS)
def test_every_character_is_in_the_tokenizer(name: str) -> None:
    tok = build_char_tokenizer()
    for ex in get_task(name).examples(200, seed=0) + get_task(name).eval_set(50):
        ids = tok(ex.text(), add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert len(ids) == len(ex.text())


def test_errors_say_what_to_change() -> None:
    with pytest.raises(ConfigError, match="must end with ' ='"):
        get_task("uppercase").answer("cat dog")
    with pytest.raises(ConfigError, match="knows no word 'tiger'"):
        get_task("translate_fr").answer("cat tiger =")
    with pytest.raises(ConfigError, match="ASCII digits only"):
        get_task("digits_en").answer("4a =")
    with pytest.raises(ConfigError, match="known tasks: uppercase"):
        get_task("reverse")
    with pytest.raises(ConfigError, match="n must be >= 0"):
        get_task("caesar").examples(-1, seed=0)
    tiny = Task("tiny", "two possible inputs", lambda r: r.choice("ab"), str.upper)
    with pytest.raises(ConfigError, match="fewer than 3 distinct evaluation inputs"):
        tiny.eval_set(3)


def test_example_is_a_frozen_value() -> None:
    ex = Example("cat =", "CAT")
    assert {ex, Example("cat =", "CAT")} == {ex}
