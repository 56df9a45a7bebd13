"""MkDocs hook: before each build, write the reference pages from the code itself, so they cannot drift: one page
per CLI command (from the typer app: arguments, options, defaults, help, panels) and one per family (from the export
registry: protocol, roles' loop kinds, sampling options with their defaults, tolerance, pruning)."""

from __future__ import annotations

import shutil
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

REFERENCE = Path(__file__).parent / "reference"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _command_page(name: str, command: Any) -> str:
    lines = [f"# deploykit {name}", "", (command.help or "").strip(), "", "```", f"deploykit {name} [OPTIONS]"
             + "".join(f" {p.name.upper()}" for p in command.params if p.param_type_name == "argument"), "```", ""]
    lines += ["| argument / option | type | default | help | applies to |", "|---|---|---|---|---|"]
    for param in command.params:
        names = " / ".join(f"`{o}`" for o in (*param.opts, *getattr(param, "secondary_opts", [])))
        default = "" if param.default is None or param.param_type_name == "argument" else f"`{param.default}`"
        panel = getattr(param, "rich_help_panel", None) or ""
        lines.append(f"| {names} | {_cell(param.bare_type())} | {_cell(default)} | {_cell(getattr(param, 'help', '') or '')} "
                     f"| {_cell(panel)} |")
    return "\n".join(lines) + "\n"


def _family_page(family: Any, zoo: list[str]) -> str:
    from deploykit.runtimes.kinds import KINDS, OPTION_NAMES

    lines = [f"# Family `{family.name}`", "", family.description + ".", "",
             f"**Zoo models:** {', '.join(f'`zoo:{z}`' for z in zoo) or 'none (your own models)'}", "",
             "**Protocol** (what your own model provides):", "", family.protocol, "",
             f"**Parity:** fixed tolerance atol {family.tolerance.atol:g}, rtol {family.tolerance.rtol:g}; an output "
             "outside it passes only by the float64 rule (see Verify and tolerances).", "",
             f"**Pruning:** magnitude; structured {'too' if family.structured else 'refused (its graphs cannot lose channels)'}.",
             ""]
    for kind_name in family.loop_kinds:
        kind = KINDS[kind_name]
        lines += [f"## Loop kind `{kind_name}` ({kind.title}): {kind.use}", ""]
        options = [f for f in fields(kind.options) if f.name in OPTION_NAMES] if kind.options else []
        if options:
            lines += ["| `deploykit sample` option | default |", "|---|---|"]
            for f in options:
                default = f.default if f.default is not MISSING else None
                lines.append(f"| `{OPTION_NAMES[f.name]}` | {'the loop decides' if default is None else default} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def on_pre_build(config: Any) -> None:
    """Regenerate docs/reference/ (cli/ and families/) from the typer app and the registries."""
    import typer

    from deploykit.cli import app
    from deploykit.exporters import FAMILIES
    from deploykit.models import ZOO

    shutil.rmtree(REFERENCE, ignore_errors=True)
    (REFERENCE / "cli").mkdir(parents=True)
    (REFERENCE / "families").mkdir(parents=True)
    group = typer.main.get_command(app)
    commands = sorted(group.commands.items())
    for name, command in commands:
        (REFERENCE / "cli" / f"{name}.md").write_text(_command_page(name, command))
    (REFERENCE / "cli" / "index.md").write_text("# CLI reference\n\nGenerated from the typer app at each build.\n\n" + "\n".join(
        f"- [`deploykit {name}`]({name}.md): {_cell((command.help or '').strip().splitlines()[0])}" for name, command in commands) + "\n")
    for name, family in sorted(FAMILIES.items()):
        zoo = [z for z, entry in ZOO.items() if entry.family == name]
        (REFERENCE / "families" / f"{name}.md").write_text(_family_page(family, zoo))
    (REFERENCE / "families" / "index.md").write_text("# Families\n\nGenerated from the export registry at each build.\n\n" + "\n".join(
        f"- [`{name}`]({name}.md): {family.description}" for name, family in sorted(FAMILIES.items())) + "\n")
