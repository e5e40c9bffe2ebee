"""Task fingerprints and merge keys."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from cache.keys import BASE, Candidate, MergeKey, examples_digest, round_weights, task_fingerprint

EX = (("abc =", "ABC"), ("hi =", "HI"))


def test_fingerprint_depends_on_examples_and_candidates() -> None:
    c1 = (Candidate(BASE), Candidate("upper", "id1"))
    c2 = (Candidate(BASE), Candidate("upper", "id2"))  # same name, new content
    assert task_fingerprint(EX, c1) == task_fingerprint(EX, tuple(reversed(c1)))
    assert task_fingerprint(EX, c1) != task_fingerprint(EX, c2)
    assert task_fingerprint(EX, c1) != task_fingerprint(EX[:1], c1)
    assert task_fingerprint(EX, c1, task_id="t") == task_fingerprint((), c1, task_id="t")


def test_fingerprint_has_no_separator_collisions() -> None:
    a = (("a\0b", "c"),)
    b = (("a", "b\0c"),)
    assert examples_digest(a) != examples_digest(b)
    assert examples_digest((("ab", ""),)) != examples_digest((("a", "b"),))


def test_merge_key_equality_and_text() -> None:
    up, tr = Candidate("upper", "u1"), Candidate("translate", "t1")
    k1 = MergeKey.build("linear", {up: 0.7, tr: 0.3})
    k2 = MergeKey.build("linear", {tr: 0.3, up: 0.7})
    assert k1 == k2 and hash(k1) == hash(k2)
    assert str(k1) == "linear(translate=0.3,upper=0.7)"
    assert k1.uses("upper") and not k1.uses("base")
    assert MergeKey.build("linear", {up: 0.7, Candidate("translate", "t2"): 0.3}) != k1
    assert MergeKey.build("ties", {up: 0.7, tr: 0.3}, {"density": 0.5}) != MergeKey.build(
        "ties", {up: 0.7, tr: 0.3}
    )
    assert MergeKey.build("linear", {Candidate(BASE): 1.0}).is_base


@given(
    st.dictionaries(st.text(min_size=1, max_size=5), st.floats(0.001, 1.0), min_size=1, max_size=8)
)
def test_round_weights_keeps_the_sum(raw: dict[str, float]) -> None:
    total = math.fsum(raw.values())
    w = {k: v / total for k, v in raw.items()}
    r = round_weights(w, 3)
    assert set(r) == set(w)
    assert abs(math.fsum(r.values()) - 1.0) < 1e-9
    assert all(abs(r[k] - w[k]) <= 1e-3 + 1e-12 for k in w)
