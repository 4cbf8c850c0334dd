"""No module of the project uses another module's private (`_`-prefixed) names: what two
modules share is the public API of one of them (e.g. apps.generation.pipeline).

Read from the source, not run: `from apps.x.y import _name`, and `alias._name` where
`alias` is a project module bound by an import (`from apps.generation import services as
generation` ... `generation._prepare(...)`)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project's code; tests may pin a private helper of the module they test.
PACKAGES = ("apps", "workers", "studio")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path, source: str | None = None) -> list[str]:
    """`path:line: what` for every private name of another project module it uses."""
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    text = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(text, filename=str(path))
    aliases: dict[str, str] = {}
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, source] if source else base)
            if not source.startswith(PACKAGES):  # a library's, or a test helper's
                continue
            for alias in node.names:
                if _is_module(f"{source}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif _private(alias.name) and source != own:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {source}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGES) and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _private(node.attr)
            and aliases[node.value.id] != own
        ):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            found.append(f"{where}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_module_s_private_names():
    found = [
        use
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for use in private_uses(path)
    ]
    assert found == [], "private names used across modules:\n" + "\n".join(found)


def test_the_check_sees_both_ways_of_reaching_a_private_name():
    """The check itself: an import of a private name and an attribute through a module
    alias are both found; the module's own names and dunders are not."""
    sample = (
        "from apps.generation.services import _csv_value, MAX_ROWS\n"
        "from apps.generation import services as generation\n"
        "from .services import _own\n"
        "generation._read_rows('x')\n"
        "generation.__name__\n"
    )
    found = private_uses(ROOT / "apps" / "evals" / "services.py", sample)
    assert found == [
        "apps/evals/services.py:1: apps.generation.services._csv_value",
        "apps/evals/services.py:4: apps.generation.services._read_rows",
    ]
    assert private_uses(ROOT / "apps" / "evals" / "views.py", sample)[1:] == [
        "apps/evals/views.py:3: apps.evals.services._own",
        "apps/evals/views.py:4: apps.generation.services._read_rows",
    ]
