"""The import graph of `src/billfold`: layers point down, and no packages form a cycle.

Every import statement counts: top-level, inside functions and under TYPE_CHECKING (a
function-local import that dodges a cycle is still a cycle). Nodes are the top-level
packages and modules under `billfold/`; the migrations are left out (Alembic loads them).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import billfold

ROOT = Path(billfold.__file__).parent
FRONT_ENDS = frozenset({"api", "cli", "mcp", "client"})
APPLICATION = frozenset({"application"})
# Core knows no domain; listed so a new top-level module has to be placed on purpose.
CORE = frozenset(
    {
        "clock",
        "config",
        "db",
        "errors",
        "events",
        "ids",
        "idempotency",
        "jobs",
        "jsonenc",
        "ledger",
        "logs",
        "migrate",
        "money",
        "pgwire",
        "processors",
        "ratelimit",
        "schemas",
        "security",
        "services",
        "testclock",
        "text",
        "tracing",
    }
)
# Bottom to top: a domain may import core and the domains before it, never one after it.
DOMAINS = (
    "operator_keys",
    "accounts",
    "webhooks",
    "billing",
    "invoices",
    "payments",
    "wallet",
    "coupons",
    "checkout",
    "subscriptions",
)
# Whole-schema and demo-data modules: above every domain, below the front ends.
AGGREGATES = frozenset({"models", "demo"})


def _node(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _module_parts(path: Path) -> list[str]:
    parts = ["billfold", *path.relative_to(ROOT).with_suffix("").parts]
    return parts[:-1] if path.name == "__init__.py" else parts


def _imported(path: Path, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            package = _module_parts(path)
            if path.name != "__init__.py":
                package = package[:-1]
            base = package[: len(package) - node.level + 1]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        # `from billfold import clock` imports the module billfold.clock.
        return [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return []


def import_edges() -> dict[tuple[str, str], str]:
    """(importer, imported) top-level nodes → one place that makes the edge."""
    nodes = {_node(p) for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    edges: dict[tuple[str, str], str] = {}
    for path in sorted(ROOT.rglob("*.py")):
        if "migrations" in path.relative_to(ROOT).parts:
            continue
        source = _node(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for module in _imported(path, node):
                parts = module.split(".")
                if len(parts) < 2 or parts[0] != "billfold" or parts[1] not in nodes:
                    continue
                if parts[1] != source:
                    where = f"{path.relative_to(ROOT.parent)}:{node.lineno}"  # type: ignore[attr-defined]
                    edges.setdefault((source, parts[1]), where)
    return edges


def _layer(node: str) -> tuple[int, int]:
    if node in CORE:
        return (0, 0)
    if node in DOMAINS:
        return (1, DOMAINS.index(node))
    if node in AGGREGATES:
        return (2, 0)
    if node in APPLICATION:
        return (3, 0)
    if node in FRONT_ENDS:
        return (4, 0)
    raise AssertionError(f"billfold/{node} is in no layer: add it to test_layers.py")


def _cycle(edges: dict[tuple[str, str], str]) -> list[str] | None:
    graph: dict[str, list[str]] = defaultdict(list)
    for source, target in edges:
        graph[source].append(target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_packages() -> None:
    edges = import_edges()
    cycle = _cycle(edges)
    assert cycle is None, (
        "import cycle: "
        + " → ".join(cycle or [])
        + "\n"
        + "\n".join(
            f"  {a} → {b}: {edges[(a, b)]}"
            for a, b in zip(cycle or [], (cycle or [])[1:], strict=False)
        )
    )


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{source} → {target} ({where})"
        for (source, target), where in sorted(import_edges().items())
        if _layer(target) > _layer(source) and not (_layer(source)[0] == _layer(target)[0] == 0)
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_only_front_ends_import_front_ends() -> None:
    offenders = [
        f"{source} → {target} ({where})"
        for (source, target), where in sorted(import_edges().items())
        if target in FRONT_ENDS and source not in FRONT_ENDS
    ]
    assert not offenders, "modules below the front ends import one:\n" + "\n".join(offenders)


def test_the_checker_sees_function_local_and_type_checking_imports(tmp_path: Path) -> None:
    """The rules above are only as good as the edges found: hidden imports count too."""
    module = tmp_path / "probe.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from billfold.api.deps import Services\n"
        "def f():\n    from billfold.subscriptions import service\n"
        "    import billfold.checkout.models\n"
    )
    tree = ast.parse(module.read_text())
    found = {m for node in ast.walk(tree) for m in _imported(ROOT / "wallet" / "x.py", node)}
    assert {"billfold.api.deps", "billfold.subscriptions", "billfold.checkout.models"} <= found
    assert _cycle({("a", "b"): "", ("b", "c"): "", ("c", "a"): ""}) == ["a", "b", "c", "a"]
    assert _cycle({("a", "b"): "", ("b", "c"): ""}) is None
