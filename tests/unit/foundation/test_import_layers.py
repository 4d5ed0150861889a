"""Imports point down the layers: core <- hardware <- plugins (policies) <- router/sim/emulator/profiler <-
adapters/integrations <- cli.

Every module's syntax tree is walked, so an import inside a function (or under ``TYPE_CHECKING``) counts like
one at the top: hiding an upward import in a function body does not get it past this test.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

import voltana

LAYERS: dict[str, int] = {
    "core": 0,
    "hardware": 1,
    "plugins": 2,
    "router": 3,
    "sim": 3,
    "emulator": 3,
    "profiler": 3,
    "adapters": 4,
    "integrations": 4,
    "cli": 5,
}
"""Rank of each top-level package of ``voltana``: a module may import its own rank or lower ones."""
LAYER_NAMES = ("core", "hardware", "plugins", "router/sim/emulator/profiler", "adapters/integrations", "cli")
ROOT_MODULE_RANK = 0
"""``voltana/__init__.py`` (the version) sits with core: everything may import it."""
ENTRY_MODULE = "__main__"
"""``voltana/__main__.py`` (``python -m voltana``) is an entry point like the console script: it ranks with
cli and is the one module beside ``voltana/__init__.py``."""

PACKAGE_ROOT = Path(voltana.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``tree``, nested ones included."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from voltana import sim` names the package voltana.sim
            names = [f"{base}.{alias.name}" for alias in node.names] if base == "voltana" else [base]
            for name in names:
                yield node.lineno, name


def _rank(module: str) -> int | None:
    """The layer of a ``voltana`` module, ROOT_MODULE_RANK for ``voltana`` itself, None outside voltana."""
    parts = module.split(".")
    if parts[0] != "voltana":
        return None
    if len(parts) == 1 or parts[1] == "__version__":
        return ROOT_MODULE_RANK
    if parts[1] == ENTRY_MODULE:
        return LAYERS["cli"]
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: package voltana.{parts[1]} has no layer; add it to LAYERS")
    return LAYERS[parts[1]]


def layer_violations(root: Path) -> list[str]:
    """One line per import of a higher layer in the package at ``root`` ("path:line: a (layer) imports b")."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        own = _rank(module)
        assert own is not None
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, imported in _imported_modules(tree, module, path.name == "__init__.py"):
            rank = _rank(imported)
            if rank is not None and rank > own:
                found.append(
                    f"{path.relative_to(root.parent)}:{line}: {module} ({LAYER_NAMES[own]}) imports "
                    f"{imported} ({LAYER_NAMES[rank]})"
                )
    return found


def test_every_import_points_down_the_layers() -> None:
    assert layer_violations(PACKAGE_ROOT) == []


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in PACKAGE_ROOT.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE_ROOT.glob("*.py")} - {"__init__", ENTRY_MODULE}
    assert modules == set(), "modules beside voltana/__init__.py belong in a layer's package"
    assert packages == set(LAYERS)


def test_an_upward_import_inside_a_function_is_found(tmp_path: Path) -> None:
    package = tmp_path / "voltana"
    for sub in ("core", "plugins", "sim", "cli"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("__version__ = '0'\n")
    (package / "core" / "fine.py").write_text("from voltana import __version__\nimport json\n")
    (package / "sim" / "fine.py").write_text("from voltana.plugins import x\nfrom . import fine\n")
    (package / "plugins" / "policy.py").write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING

            if TYPE_CHECKING:
                from voltana.cli import app

            def run():
                from voltana.sim.runner import simulate
                return simulate()
            """
        )
    )
    (package / "core" / "sneaky.py").write_text("def f():\n    from .. import sim\n    import voltana.cli\n")
    assert layer_violations(package) == [
        "voltana/core/sneaky.py:2: voltana.core.sneaky (core) imports voltana.sim "
        "(router/sim/emulator/profiler)",
        "voltana/core/sneaky.py:3: voltana.core.sneaky (core) imports voltana.cli (cli)",
        "voltana/plugins/policy.py:5: voltana.plugins.policy (plugins) imports voltana.cli (cli)",
        "voltana/plugins/policy.py:8: voltana.plugins.policy (plugins) imports voltana.sim.runner "
        "(router/sim/emulator/profiler)",
    ]
