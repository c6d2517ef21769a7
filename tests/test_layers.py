"""The architecture as a test: mailgate's packages form a stack, every import points down.

Every module under mailgate/ is parsed (imports under `if TYPE_CHECKING:` do not count: they exist
for the type checker only), the imports are folded into a graph of top-level packages, and the test
fails on any cycle, naming the files, lines and names that close it, and on any import that points
up the declared stack. The sandbox and the remote client stand apart: they import nothing of the
product. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.nodb

PACKAGE = Path(__file__).resolve().parent.parent / "mailgate"

# Lowest first. A package may import from its own layer's packages only in the shell; everything
# else imports strictly from lower layers. A new package must be placed here.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "base: settings parsing, address syntax, secrets, logging, the worker loop, the SQLite "
        "backend, command progress",
        {"addresses", "conf", "crypto", "logs", "worker", "dbsqlite", "progress"},
    ),
    ("audit: the log of security events", {"audit"}),
    ("people and process state", {"accounts", "core"}),
    ("keys: API keys, their scopes and rate", {"keys"}),
    ("providers: endpoints, scopes, error catalogues", {"providers"}),
    ("mail server settings", {"servers"}),
    ("oauth: consent flow and token lifecycle", {"oauth"}),
    ("transports: SMTP, IMAP, POP3", {"transports"}),
    ("connections: a server's transport with its credential", {"connections"}),
    ("mail: outgoing and incoming", {"outbox", "inbox"}),
    ("relay: the SMTP listener applications submit mail to", {"relay"}),
    ("diagnostics: Test Connection, health, metrics", {"diagnostics"}),
    (
        "shell: REST API, console, processes, CLI",
        {"api", "console", "urls", "wsgi", "settings", "cli"},
    ),
]
# Packages that import nothing of the product (the shell may import them).
STANDALONE = {"sandbox", "client"}
SHELL = LAYERS[-1][1]


@dataclass(frozen=True)
class Import:
    source: str  # package importing
    target: str  # package imported
    file: str
    line: int
    names: str


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def _module_name(path: Path) -> list[str]:
    parts = ["mailgate", *path.relative_to(PACKAGE).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _package_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != "mailgate":
        return None
    return parts[1] if len(parts) > 1 else "mailgate"


def _top_level_names() -> set[str]:
    return {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}


def collect_imports() -> list[Import]:
    found: list[Import] = []
    top_level = _top_level_names()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        source = module[1] if len(module) > 1 else "mailgate"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets: list[tuple[str, str]] = []
            if isinstance(node, ast.Import):
                targets = [(alias.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module if path.name == "__init__.py" else module[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    dotted = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    dotted = node.module or ""
                names = ", ".join(alias.name for alias in node.names)
                if dotted == "mailgate":
                    # `from mailgate import providers` imports the package named.
                    targets = [
                        (f"mailgate.{a.name}" if a.name in top_level else dotted, a.name)
                        for a in node.names
                    ]
                else:
                    targets = [(dotted, names)]
            for dotted, names in targets:
                target = _package_of(dotted)
                if target and target not in (source, "mailgate"):
                    found.append(
                        Import(
                            source,
                            target,
                            str(path.relative_to(PACKAGE.parent)),
                            node.lineno,
                            names,
                        )
                    )
    return found


def cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _describe(imports: list[Import], members: set[str]) -> str:
    lines = [
        f"  {i.source} -> {i.target}: {i.file}:{i.line} imports {i.names}"
        for i in imports
        if i.source in members and i.target in members
    ]
    return "\n".join(sorted(set(lines)))


def test_the_packages_form_a_stack_without_cycles() -> None:
    imports = collect_imports()
    found = cycles(imports)
    report = [f"cycle among {', '.join(c)}:\n{_describe(imports, set(c))}" for c in found]
    assert not found, "import cycles between mailgate's packages:\n" + "\n".join(report)


def test_every_import_points_down_the_declared_layers(capsys: pytest.CaptureFixture[str]) -> None:
    layer_of = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
    unplaced = _top_level_names() - set(layer_of) - STANDALONE - {"__init__"}
    assert not unplaced, (
        f"place the new package(s) {sorted(unplaced)} in tests/test_layers.py LAYERS "
        "(and in docs/architecture.md)"
    )
    wrong = []
    for imp in collect_imports():
        if imp.source in STANDALONE:
            wrong.append(
                f"{imp.file}:{imp.line}: {imp.source} must import nothing of the product ({imp.target}: {imp.names})"
            )
            continue
        if imp.target in STANDALONE:
            if imp.source not in SHELL:
                wrong.append(f"{imp.file}:{imp.line}: only the shell may use {imp.target}")
            continue
        src, dst = layer_of[imp.source], layer_of[imp.target]
        if dst > src or (dst == src and imp.source not in SHELL):
            wrong.append(
                f"{imp.file}:{imp.line}: {imp.source} ({LAYERS[src][0].split(':')[0]}) imports "
                f"{imp.names} from {imp.target} ({LAYERS[dst][0].split(':')[0]}), which is not below it"
            )
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(set(wrong)))
    with capsys.disabled():
        print("\nmailgate's layers, each importing only from the layers listed before it:")
        for number, (title, names) in enumerate(LAYERS):
            present = sorted(n for n in names if n in _top_level_names())
            print(f"  {number}. {title}: {', '.join(present)}")
        print(f"  standalone (import nothing of the product): {', '.join(sorted(STANDALONE))}")


def test_the_cycle_finder_names_the_files_of_a_cycle() -> None:
    imports = [
        Import("outbox", "oauth", "mailgate/outbox/x.py", 3, "thing"),
        Import("oauth", "outbox", "mailgate/oauth/y.py", 7, "other"),
        Import("oauth", "providers", "mailgate/oauth/z.py", 1, "p"),
    ]
    assert cycles(imports) == [["oauth", "outbox"]]
    text = _describe(imports, {"oauth", "outbox"})
    assert "mailgate/outbox/x.py:3 imports thing" in text
    assert "mailgate/oauth/y.py:7 imports other" in text
    assert "providers" not in text
