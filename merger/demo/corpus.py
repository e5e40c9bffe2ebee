"""An offline pretraining corpus: docstrings of the Python standard library.

The docstrings are read from the standard library's source files with :mod:`ast`
(nothing is imported, so no module runs code such as ``antigravity`` opening a
browser). Files are visited in sorted order and the text is cut at ``max_chars``,
so the corpus is a pure function of the Python installation and ``max_chars``.
Its SHA-256 goes into the demo family's recipe hash: another Python version
gives another corpus, hence another family.

Only characters the char tokenizer knows are kept (printable ASCII and the
newline); tabs become spaces and anything else is dropped.
"""

from __future__ import annotations

import ast
import hashlib
import string
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from merger.errors import ConfigError, NotFoundError

_KEEP = frozenset(set(string.printable) - set("\r\x0b\x0c"))
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
DOC_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    """Pretraining text and its fingerprint.

    ``text`` is at most the requested number of characters, documents separated
    by a blank line; ``sha256`` is the hex digest of its UTF-8 bytes.
    """

    text: str
    sha256: str
    n_docs: int


def _clean(doc: str) -> str:
    doc = doc.replace("\t", "    ")
    return "".join(ch for ch in doc if ch in _KEEP).strip()


def _module_files(root: Path) -> Iterator[Path]:
    """Source files of the standard library's public modules, in sorted order."""
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_"))
    for name in names:
        single = root / f"{name}.py"
        package = root / name
        if single.is_file():
            yield single
        elif package.is_dir():
            for f in sorted(package.rglob("*.py")):
                if not _SKIP_DIRS.intersection(f.relative_to(root).parts):
                    yield f


def _docstrings(source: str) -> Iterator[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a stray file for another Python version
        return
    for node in ast.walk(tree):
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        ) and (doc := ast.get_docstring(node, clean=True)):
            yield doc


def stdlib_docstrings(max_chars: int, min_doc_chars: int = 40) -> Corpus:
    """Concatenate standard-library docstrings up to ``max_chars`` characters.

    Docstrings shorter than ``min_doc_chars`` (one-liners such as "Return self.")
    are skipped: they repeat and teach little.
    """
    if max_chars <= 0:
        raise ConfigError(f"max_chars must be positive; got {max_chars}")
    root = Path(sysconfig.get_path("stdlib"))
    if not (root / "os.py").is_file():
        raise NotFoundError(
            f"the Python standard library's sources are not at {root}; "
            "install the python3 sources (e.g. the libpython3-stdlib package)"
        )
    parts: list[str] = []
    total = 0
    for path in _module_files(root):
        for raw in _docstrings(path.read_text(encoding="utf-8", errors="replace")):
            doc = _clean(raw)
            if len(doc) < min_doc_chars:
                continue
            parts.append(doc)
            total += len(doc) + len(DOC_SEPARATOR)
            if total >= max_chars:
                text = DOC_SEPARATOR.join(parts)[:max_chars]
                return Corpus(text, hashlib.sha256(text.encode()).hexdigest(), len(parts))
    text = DOC_SEPARATOR.join(parts)
    return Corpus(text, hashlib.sha256(text.encode()).hexdigest(), len(parts))
