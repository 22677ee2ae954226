"""Every ``>>>`` example in the package's docstrings runs and prints what it says.

One test per module that has examples, found by walking ``dgm`` with :mod:`pkgutil`; a module
added later with examples is covered without writing a test.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dgm

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

#: module -> why its examples are known to fail (a strict xfail: once fixed, the test fails
#: until the entry is removed)
KNOWN_BROKEN: dict[str, str] = {}


def _module_names() -> list[str]:
    names = [dgm.__name__]
    for info in pkgutil.walk_packages(dgm.__path__, prefix=f"{dgm.__name__}."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # importing it runs the CLI
            names.append(info.name)
    return sorted(names)


def _tests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module, name) if t.examples]


def _with_examples() -> list[object]:
    names: list[object] = []
    for name in _module_names():
        try:
            has = bool(_tests(name))
        except Exception:  # noqa: BLE001  (an import error fails that module's test below)
            has = True
        if has and name in KNOWN_BROKEN:
            mark = pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN[name])
            names.append(pytest.param(name, marks=mark, id=name))
        elif has:
            names.append(name)
    return names


def test_every_module_imports() -> None:
    for name in _module_names():
        importlib.import_module(name)


@pytest.mark.parametrize("name", _with_examples())
def test_examples(name: str) -> None:
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    failed: list[str] = []
    for test in _tests(name):
        result = runner.run(test, out=failed.append)
        if result.failed:
            failed.append(f"^ in {test.name}")
    assert not failed, "\n".join(failed)
