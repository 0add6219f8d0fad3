"""Dependencies point one way: config -> data, models -> start-up -> train,
and the trainer builds evaluators, never the reverse. Read from the source (every `import` and
`from ... import`, lazy ones inside functions included), so a lazy import cannot hide a cycle."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "mm1_jax")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _graph() -> dict[str, set[str]]:
    """mm1_jax module -> the mm1_jax modules it imports."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(PACKAGE) for f in fs if f.endswith(".py")]
    modules = {_module_name(f): f for f in files}
    graph = {}
    for name, path in modules.items():
        deps = set()
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_graph_is_read():
    g = _graph()
    assert "mm1_jax.startup" in g["mm1_jax.train.loop"]
    assert "mm1_jax.eval.evaluators" in g["mm1_jax.train.loop"]  # the trainer builds evaluators


@pytest.mark.parametrize("module", sorted(m for m in _graph() if m.startswith("mm1_jax.eval")))
def test_evaluation_never_imports_the_trainer(module):
    bad = sorted(m for m in _reachable(_graph(), module) | {module} if m.startswith("mm1_jax.train"))
    assert not bad, f"{module} reaches {bad}"


def test_no_import_cycles():
    g = _graph()
    cycles = sorted(m for m in g if m in _reachable(g, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize("low,high", [("mm1_jax.config", "mm1_jax."), ("mm1_jax.models", "mm1_jax.train"),
                                      ("mm1_jax.data", "mm1_jax.train"),
                                      ("mm1_jax.data", "mm1_jax.models")])
def test_lower_layers_do_not_import_higher_ones(low, high):
    g = _graph()
    for m in (m for m in g if m == low or m.startswith(low + ".")):
        # config reads the data kinds from their one declaration and its error from the error
        # family, modules importing nothing
        bad = sorted(d for d in _reachable(g, m) if d.startswith(high) and d != m
                     and not (low == "mm1_jax.config" and d in LEAVES))
        assert not bad, f"{m} reaches {bad}"


LEAVES = ("mm1_jax.data.kinds", "mm1_jax.errors")  # imported from anywhere; import nothing


@pytest.mark.parametrize("module", LEAVES)
def test_the_leaves_import_nothing(module):
    assert _graph()[module] == set()
