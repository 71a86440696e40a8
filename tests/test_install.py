"""The README's two quick-start commands give a machine on which the README's test command passes (issue 14.13).

The fault: the README installed ``.[dev]``, CI (``.ci/run``) ``.[dev,llama]``, and the LoRA tests need ``peft``, which
only ``llama`` held. So: the README and CI install the same extras and run the same test command, and every
third-party module the package and its tests import comes with what that install pulls in (directly or through a
dependency's own requirements).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import runpy
import sys

import pytest
import setuptools
from packaging.requirements import Requirement

from distinctad.testing import REPO

INSTALL = re.compile(r"pip install\b[^\n]*?-e\s+[\"']?\.\[([^\]]*)\][\"']?")
OPTIONAL = {"bert_score"}  # the bertscore backend, imported only when chosen ("Needs pip install bert-score")
SOURCES = ("train", "data", "eval", "distinctad", "launch", "tests")  # benchmarks/ are run by hand


def _extras(text: str, where: str) -> set[str]:
    found = INSTALL.findall(text)
    assert len(found) == 1, f"{where}: expected one `pip install -e .[EXTRAS]`, found {found}"
    return {e.strip() for e in found[0].split(",") if e.strip()}


def _readme_quick_start() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash", 1)[1].split("```", 1)[0]


def _setup_kwargs(monkeypatch) -> dict:
    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    return captured


def test_readme_and_ci_install_the_same_extras_and_run_the_same_tests():
    quick = _readme_quick_start()
    ci = (REPO / ".ci/run").read_text(encoding="utf-8")
    assert _extras(quick, "README quick start") == _extras(ci, ".ci/run")
    readme_test = re.search(r"^(python -m pytest [^#\n]*?)\s*#", quick, re.M).group(1)
    assert re.search(rf"^{re.escape(readme_test)}\s", ci, re.M), f"CI does not run the README's `{readme_test}`"


def _closure(requirements: list[str]) -> set[str]:
    """Normalised names of the distributions ``requirements`` install, with their own requirements, recursively
    (a dependency's own extras are not followed)."""

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = norm(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in md.requires(req.name) or []]
        except md.PackageNotFoundError:
            pass  # not installed here: its own requirements are unknown, the name itself still counts
    return seen


def _imported_modules() -> dict[str, str]:
    """Top-level module -> a file importing it, over the package and the tests (absolute imports only)."""
    mods: dict[str, str] = {}
    for root in SOURCES:
        for path in sorted((REPO / root).rglob("*")):
            if path.suffix not in (".py", ".sh") or not path.is_file():
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except SyntaxError:  # a plain bash file
                continue
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    mods.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return mods


def test_the_readme_install_brings_every_module_the_code_and_tests_import(monkeypatch):
    kwargs = _setup_kwargs(monkeypatch)
    extras = _extras(_readme_quick_start(), "README quick start")
    wanted = list(kwargs["install_requires"]) + [r for e in sorted(extras) for r in kwargs["extras_require"][e]]
    installed = _closure(wanted)
    dists = md.packages_distributions()
    missing = []
    for module, where in sorted(_imported_modules().items()):
        if module in sys.stdlib_module_names or module in ("distinctad", "__future__") or module in OPTIONAL:
            continue
        providers = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [])}
        if not providers:
            pytest.fail(f"{where} imports {module!r}, which no installed distribution provides")
        if not providers & installed:
            missing.append(f"{module} ({where}; from {sorted(providers)})")
    assert not missing, f"pip install -e .[{','.join(sorted(extras))}] does not bring: {missing}"


def test_the_lora_tests_dependency_is_in_dev(monkeypatch):
    """``.[dev]`` alone is enough for the test suite too (what most people type)."""
    extras = _setup_kwargs(monkeypatch)["extras_require"]
    assert {Requirement(r).name for r in extras["llama"]} <= {Requirement(r).name for r in extras["dev"]}
