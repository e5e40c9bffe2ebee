"""Seeded string tasks that the demo family's variants are fine-tuned on.

Every task maps an input that ends with the delimiter ``" ="`` to an output, e.g.
``"cat dog =" -> "CAT DOG"``. The training text of an example is LM-Cocktail's
scoring layout, ``input + " " + output`` followed by EOS (the tokenizer adds BOS
in front). Inputs carry no task marker: ``"cat dog ="`` is equally a prompt for
``uppercase``, ``capitalize`` and ``translate_fr``, so only the model (or the
examples the gateway scores variants on) decides what happens to it.

Held-out evaluation: an input belongs to the evaluation split when the first
byte of its SHA-256 is below ``EVAL_FRACTION * 256``. :meth:`Task.examples` only
draws training-split inputs and :meth:`Task.eval_set` only evaluation-split
ones, so the two are disjoint for every ``n`` and ``seed``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from merger.errors import ConfigError

DELIMITER = " ="
EVAL_FRACTION = 0.2
EVAL_SEED = 0x5EED
_MAX_MISSES = 20_000  # consecutive draws without a usable input before giving up

# Toy word-for-word translations over disjoint English word lists.
FRENCH = {
    "cat": "chat", "dog": "chien", "red": "rouge", "house": "maison", "water": "eau",
    "bread": "pain", "milk": "lait", "sun": "soleil", "moon": "lune", "tree": "arbre",
    "book": "livre", "apple": "pomme", "green": "vert", "black": "noir", "white": "blanc",
    "car": "voiture", "sea": "mer", "fish": "poisson", "horse": "cheval", "bird": "oiseau",
}  # fmt: skip
GERMAN = {
    "man": "mann", "woman": "frau", "child": "kind", "day": "tag", "night": "nacht",
    "city": "stadt", "road": "strasse", "door": "tuer", "window": "fenster", "table": "tisch",
    "chair": "stuhl", "friend": "freund", "small": "klein", "big": "gross", "old": "alt",
    "new": "neu", "blue": "blau", "yellow": "gelb", "cold": "kalt", "snow": "schnee",
}  # fmt: skip
DIGITS_EN = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_FR = ("zero", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf")
# Inputs of the letter-level tasks: the translation words plus a few more, so a bare
# prompt such as "cat dog =" is ambiguous between tasks.
WORDS = tuple(sorted({*FRENCH, *GERMAN, "hello", "world", "green", "river", "stone", "light"}))


@dataclass(frozen=True)
class Example:
    """One (input, output) pair; ``input`` ends with :data:`DELIMITER`."""

    input: str
    output: str

    def text(self) -> str:
        """The training / scoring text without specials: ``input + " " + output``."""
        return f"{self.input} {self.output}"


def in_eval_split(text: str) -> bool:
    """Whether ``text`` (an input) is reserved for evaluation."""
    return hashlib.sha256(text.encode()).digest()[0] < int(EVAL_FRACTION * 256)


def _strip(text: str, task: str) -> str:
    if not text.endswith(DELIMITER):
        raise ConfigError(f"a {task} input must end with {DELIMITER!r}; got {text!r}")
    return text[: -len(DELIMITER)]


@dataclass(frozen=True)
class Task:
    """A named input generator with its reference answer.

    ``draw(rng)`` returns an input body (without the delimiter) and
    ``solve(body)`` its output.
    """

    name: str
    description: str
    draw: Callable[[random.Random], str]
    solve: Callable[[str], str]

    def answer(self, text: str) -> str:
        """The reference output for ``text`` (an input ending with ``" ="``)."""
        return self.solve(_strip(text, self.name))

    def _sample(self, n: int, seed: int | str, want_eval: bool, unique: bool) -> list[Example]:
        if n < 0:
            raise ConfigError(f"n must be >= 0; got {n}")
        rng = random.Random(f"{self.name}:{seed}")  # noqa: S311  (seeded data, not secrets)
        out: list[Example] = []
        seen: set[str] = set()
        misses = 0
        while len(out) < n:
            text = self.draw(rng) + DELIMITER
            if in_eval_split(text) != want_eval or (unique and text in seen):
                misses += 1
                if misses > _MAX_MISSES:
                    split = "evaluation" if want_eval else "training"
                    raise ConfigError(
                        f"task {self.name} has fewer than {n} distinct {split} inputs; ask for fewer"
                    )
                continue
            misses = 0
            seen.add(text)
            out.append(Example(text, self.answer(text)))
        return out

    def examples(self, n: int, seed: int) -> list[Example]:
        """``n`` training-split examples drawn with ``seed`` (repeats possible)."""
        return self._sample(n, seed, want_eval=False, unique=False)

    def eval_set(self, n: int) -> list[Example]:
        """The first ``n`` distinct held-out examples (a prefix of a fixed sequence)."""
        return self._sample(n, f"eval-{EVAL_SEED}", want_eval=True, unique=True)


def _words(rng: random.Random, vocab: tuple[str, ...], lo: int = 2, hi: int = 4) -> str:
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))


def _translate(table: dict[str, str], task: str) -> Callable[[str], str]:
    def solve(body: str) -> str:
        words = body.split(" ")
        unknown = [w for w in words if w not in table]
        if unknown:
            raise ConfigError(f"{task} knows no word {unknown[0]!r}; use one of {sorted(table)}")
        return " ".join(table[w] for w in words)

    return solve


def _spell(names: tuple[str, ...], task: str) -> Callable[[str], str]:
    def solve(body: str) -> str:
        if not body.isascii() or not body.isdigit():
            raise ConfigError(f"a {task} input must be ASCII digits only; got {body!r}")
        return " ".join(names[int(d)] for d in body)

    return solve


def _digit_string(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 5)))


def _caesar(body: str) -> str:
    return "".join(
        chr((ord(c) - ord("a") + 1) % 26 + ord("a")) if "a" <= c <= "z" else c for c in body
    )


_FR_WORDS, _DE_WORDS = tuple(sorted(FRENCH)), tuple(sorted(GERMAN))

ALL_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "uppercase", "write the words in capital letters", lambda r: _words(r, WORDS), str.upper
        ),
        Task(
            "capitalize",
            "capitalize the first letter of each word",
            lambda r: _words(r, WORDS),
            lambda s: " ".join(w[:1].upper() + w[1:] for w in s.split(" ")),
        ),
        Task(
            "digits_en",
            "spell out each digit in English",
            _digit_string,
            _spell(DIGITS_EN, "digits_en"),
        ),
        Task(
            "digits_fr",
            "spell out each digit in French",
            _digit_string,
            _spell(DIGITS_FR, "digits_fr"),
        ),
        Task(
            "translate_fr",
            "translate word for word into (toy) French",
            lambda r: _words(r, _FR_WORDS),
            _translate(FRENCH, "translate_fr"),
        ),
        Task(
            "translate_de",
            "translate word for word into (toy) German",
            lambda r: _words(r, _DE_WORDS),
            _translate(GERMAN, "translate_de"),
        ),
        Task(
            "caesar",
            "shift every letter one place on in the alphabet",
            lambda r: _words(r, WORDS),
            _caesar,
        ),
    )
}


def get_task(name: str) -> Task:
    """Look a task up by name; unknown names raise :class:`ConfigError` listing the known ones."""
    if name not in ALL_TASKS:
        raise ConfigError(f"unknown demo task {name!r}; known tasks: {', '.join(ALL_TASKS)}")
    return ALL_TASKS[name]
