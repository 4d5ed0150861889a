"""Pages generated at docs build time (mkdocs-gen-files runs this file).

The changelog is CHANGELOG.md at the repository root. Three reference pages, each built from the one place
the facts live, so they cannot drift:
- ``reference/config.md`` from the pydantic settings model (``voltana.core.config.VoltanaConfig``);
- ``reference/cli.md`` from the click command tree of the ``voltana`` app, plugin commands included;
- ``reference/hooks.md`` from the pluggy hook specifications (``voltana.core.hookspecs``) and the policies the
  built-in plugins register (``voltana_register_policies``).

``tests/unit/docs`` imports the ``*_reference`` functions and checks that every config key, CLI option and
hook appears.
"""

from __future__ import annotations

import functools
import inspect
import json
import operator
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from voltana.cli import build_app
from voltana.core import hookspecs, policies
from voltana.core.config import ENV_PREFIX, VoltanaConfig
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.policies import policies_of
from voltana.plugins import DEFAULT_PLUGINS


def _plain(annotation: Any) -> Any:
    """``annotation`` without ``Annotated`` validators (``ConfigFloat | None`` reads ``float | None``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _plain(args[0])
    if not args or origin is typing.Literal:
        return annotation
    plain = tuple(_plain(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(operator.or_, plain)
    return origin[plain]


def _type_name(annotation: Any) -> str:
    annotation = _plain(annotation)
    text = (
        str(annotation) if typing.get_origin(annotation) else getattr(annotation, "__name__", str(annotation))
    )
    return text.replace("typing.", "").replace("pydantic.types.", "").replace("NoneType", "None")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(section)"
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    return f"`{json.dumps(value)}`"


def _constraints(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for name, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(item, name, None)
            if bound is not None:
                parts.append(f"{symbol} {bound}")
    return ", ".join(parts)


def config_keys() -> Iterator[tuple[str, FieldInfo, str]]:
    """Every setting as (dotted key, field, section docstring), in declaration order."""
    for name, field in VoltanaConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            doc = inspect.getdoc(annotation) or ""
            for sub, subfield in annotation.model_fields.items():
                yield f"{name}.{sub}", subfield, doc
        else:
            yield name, field, inspect.getdoc(VoltanaConfig) or ""


def config_reference() -> str:
    """Markdown table of every configuration key: type, default, bounds, env variable, description."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `voltana.core.config.VoltanaConfig`. Set a key in the TOML file",
        "(`[section] key = value`) or in the environment (`VOLTANA_SECTION__KEY`); the environment wins.",
        "`voltana config show` prints the effective values and where each came from.",
        "",
    ]
    section = None
    for key, field, doc in config_keys():
        head = key.split(".")[0] if "." in key else "(top level)"
        if head != section:
            section = head
            lines += [""] if lines[-1] else []
            lines += [f"## `{head}`" if head != "(top level)" else "## Top level", "", doc, ""]
            lines += [
                "| key | type | default | bounds | environment | description |",
                "|---|---|---|---|---|---|",
            ]
        env = ENV_PREFIX + key.upper().replace(".", "__")
        description = (field.description or "").replace("|", "\\|")
        lines.append(
            f"| `{key}` | `{_type_name(field.annotation)}` | {_default(field)} | {_constraints(field)} "
            f"| `{env}` | {description} |"
        )
    return "\n".join(lines) + "\n"


def _walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    # Typer vendors its own click, so commands are recognised by shape, not by click's classes.
    yield path, command
    if getattr(command, "commands", None):
        for name in sorted(command.commands):
            yield from _walk(command.commands[name], f"{path} {name}")


def cli_commands() -> list[tuple[str, Any]]:
    """(full command path, click command) for ``voltana`` and every subcommand, plugin commands included."""

    return list(_walk(typer.main.get_command(build_app()), "voltana"))


def cli_reference() -> str:
    """Markdown: each command's help and a table of its options and arguments."""
    lines = [
        "# Command line reference",
        "",
        "Generated from the `voltana` command tree (plugin commands included).",
        "",
    ]
    for path, command in cli_commands():
        lines += [f"## `{path}`", "", inspect.cleandoc(command.help or ""), ""]
        params = [p for p in command.params if p.name != "help"]
        if not params:
            continue
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        ctx = typer.Context(command)
        for param in params:
            names = ", ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
            default = f"`{param.default}`" if param.default not in (None, ()) else ""
            text = (getattr(param, "help", "") or "").replace("|", "\\|").replace("\n", " ")
            kind = param.display_type(ctx).strip("<>")
            lines.append(f"| {names} | {kind} | {default} | {text} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def hook_specs() -> list[tuple[str, Any]]:
    """(name, function) of every pluggy hook specification."""
    return [
        (name, func)
        for name, func in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("voltana_")
    ]


def hooks_reference() -> str:
    """Markdown: signature, calling convention and docstring of every hook."""
    lines = [
        "# Hook reference",
        "",
        "Generated from `voltana.core.hookspecs`. Implement a hook with `@voltana.core.hookspecs.hookimpl`",
        "in a module published under the `voltana` entry-point group (third-party plugins run before",
        "built-ins). Clock and routing policies are not hooks of their own: plugins register them by name",
        "through `voltana_register_policies` (see [Plugins](../plugins.md)); the built-in ones are listed at",
        "the end.",
        "",
    ]
    for name, func in hook_specs():
        options = getattr(func, "voltana_spec", {}) or {}
        kind = "first result" if options.get("firstresult") else "broadcast (every implementation runs)"
        signature = str(inspect.signature(func)).replace("'", "")
        lines += [f"## `{name}`", "", f"```python\ndef {name}{signature}\n```", "", f"Calling: {kind}.", ""]
        lines += [inspect.getdoc(func) or "", ""]
    lines += ["## Built-in policies", "", inspect.getdoc(policies) or "", ""]
    lines += ["| kind | name | description |", "| --- | --- | --- |"]
    for info in sorted(policies_of(builtin_plugins().hook), key=lambda p: (p.kind, p.name)):
        lines.append(f"| {info.kind} | `{info.name}` | {info.description} |")
    return "\n".join(lines) + "\n"


def builtin_plugins() -> Any:
    """A plugin manager with the built-in plugins only (no third-party entry points)."""
    return make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)


def benchmarks_page(results_dir: Path) -> str:
    """Markdown: every benchmark result (``--json`` output) under ``results_dir``, with its machine."""
    lines = [
        "# Benchmarks",
        "",
        "Generated from the `--json` output of the scripts in `benchmarks/` (rerun one with",
        "`.venv/bin/python benchmarks/NAME.py --json docs/benchmarks/NAME.json`). Each table holds ratios",
        "measured in one run; absolute times depend on the machine noted under it (shared and noisy).",
        "",
    ]
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        machine = result.get("machine", {})
        lines += [f"## `{result['benchmark']}`", ""]
        for table in result["tables"]:
            lines += [f"**{table['title']}**", ""]
            lines.append("| " + " | ".join(table["columns"]) + " |")
            lines.append("|" + "---|" * len(table["columns"]))
            lines += [
                "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table["rows"]
            ]
            lines += ["", table["caption"], ""] if table["caption"] else [""]
        lines += [
            f"*Machine: {machine.get('processor')}, {machine.get('cpus')} CPUs (1-minute load average "
            f"{machine.get('load_average_1m')}), Python {machine.get('python')}, "
            f"voltana {machine.get('voltana')} at {machine.get('commit')}, {machine.get('date_utc')} UTC.*",
            "",
        ]
    return "\n".join(lines) + "\n"


def _write_pages() -> None:
    import mkdocs_gen_files  # noqa: PLC0415 - present while mkdocs builds; tests import this file without it

    changelog = Path(__file__).resolve().parents[1] / "CHANGELOG.md"
    for path, text in (
        ("changelog.md", changelog.read_text()),
        ("benchmarks.md", benchmarks_page(Path(__file__).resolve().parent / "benchmarks")),
        ("reference/config.md", config_reference()),
        ("reference/cli.md", cli_reference()),
        ("reference/hooks.md", hooks_reference()),
    ):
        with mkdocs_gen_files.open(path, "w") as fh:
            fh.write(text)


if __name__ in {"__main__", "<run_path>"}:
    _write_pages()
