"""Every public name in the package has a docstring (issue 11, item 6).

Walks ``pseudolabel/`` and ``loops/`` with :mod:`ast` (nothing is imported): module-level
functions and classes whose names do not start with ``_``, and the public methods of public
classes (dunder and ``_private`` methods, ``@overload`` stubs and property setters excepted;
a method overriding a documented base method is not: it says what it does for its class).
The failure names every undocumented one as ``path:line name``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pseudolabel", "loops")


def _is_overload(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """An ``@overload`` stub, or a property's ``@x.setter`` / ``@x.deleter`` (the getter
    carries the property's docstring)."""
    return any((isinstance(d, ast.Name) and d.id == "overload")
               or (isinstance(d, ast.Attribute) and d.attr in ("overload", "setter", "deleter"))
               for d in node.decorator_list)


def undocumented(path: Path) -> list[str]:
    """``"path:line name"`` for each public function, class and public method of a public
    class in the file at ``path`` that has no docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(ROOT)
    out: list[str] = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        if isinstance(node, ast.ClassDef) or not _is_overload(node):
            if ast.get_docstring(node) is None:
                out.append(f"{rel}:{node.lineno} {node.name}")
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_")
                        and not _is_overload(item) and ast.get_docstring(item) is None):
                    out.append(f"{rel}:{item.lineno} {node.name}.{item.name}")
    return out


def test_every_public_name_has_a_docstring() -> None:
    files = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    assert len(files) > 50, f"found only {len(files)} modules under {PACKAGES}: wrong root {ROOT}?"
    found = [name for f in files for name in undocumented(f)]
    assert not found, f"{len(found)} public names without a docstring:\n" + "\n".join(found)


def test_the_check_finds_a_missing_docstring(tmp_path: Path) -> None:
    # the walker itself: a public function, class and method without text are reported,
    # private ones and documented ones are not
    src = ROOT / "pseudolabel" / "_probe_for_test_docstrings.py"
    src.write_text('def f():\n    pass\n\n\ndef _g():\n    pass\n\n\nclass C:\n    """doc"""\n\n'
                   '    def m(self):\n        pass\n\n    def _p(self):\n        pass\n\n'
                   '    def __init__(self):\n        pass\n', encoding="utf-8")
    try:
        assert undocumented(src) == ["pseudolabel/_probe_for_test_docstrings.py:1 f",
                                     "pseudolabel/_probe_for_test_docstrings.py:12 C.m"]
    finally:
        src.unlink()
