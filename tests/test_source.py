"""Rules of the code base read from its source (as tests/test_imports.py reads the imports):
layers never name a mesh axis or ask the platform, the loop reads as a loop, no function is
long, and importing the package changes no process-wide setting."""

import ast
import os
import subprocess
import sys

import pytest

from mm1_jax.config import MESH_AXES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "mm1_jax")
# Ways of asking which devices or platform are in use.
PLATFORM_QUERIES = {"default_backend", "devices", "local_devices", "device_count",
                    "local_device_count", "platform", "abstract_device", "device_kind",
                    "process_index", "process_count"}


def _files(folder: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                  if f.endswith(".py"))


def _docstrings(tree) -> set[int]:
    """ids of the string constants that are docstrings (prose may name anything)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


@pytest.mark.parametrize("path", _files(os.path.join(PACKAGE, "models")),
                         ids=lambda p: os.path.relpath(p, PACKAGE))
def test_models_never_name_a_mesh_axis_or_query_the_platform(path):
    """Layers reach mesh axes only through the rules table (mm1_jax/sharding.py) and learn
    their kernels from the `Kernels` start-up resolved (mm1_jax/models/kernels.py)."""
    tree = ast.parse(open(path).read())
    docs = _docstrings(tree)
    axes = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and n.value in MESH_AXES and id(n) not in docs]
    queries = [(n.lineno, n.attr) for n in ast.walk(tree)
               if isinstance(n, ast.Attribute) and n.attr in PLATFORM_QUERIES]
    queries += [(n.lineno, n.id) for n in ast.walk(tree)
                if isinstance(n, ast.Name) and n.id in PLATFORM_QUERIES]
    assert not axes, f"names a mesh axis at lines {axes}"
    assert not queries, f"queries the platform at {queries}"


def test_the_rule_test_sees_what_it_forbids():
    tree = ast.parse('x = PartitionSpec("expert")\ny = jax.default_backend()\n"""a doc"""')
    docs = _docstrings(tree)
    assert [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and n.value in MESH_AXES and id(n) not in docs] == ["expert"]
    assert [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and n.attr in PLATFORM_QUERIES] == ["default_backend"]


def _functions():
    for path in _files(PACKAGE):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield os.path.relpath(path, ROOT), node.name, node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_80_lines():
    long = sorted((n, f"{p}:{name}") for p, name, n in _functions() if n > 80)
    assert not long, long


def test_train_reads_as_a_loop():
    (lines,) = [n for p, name, n in _functions()
                if p == os.path.join("mm1_jax", "train", "loop.py") and name == "train"]
    assert lines <= 70, lines


def test_importing_the_package_sets_nothing_process_wide():
    """No module switches a global at import (flax's eager sharding, libtpu's lock, XLA
    flags): the entry points that need a setting make it."""
    script = (
        "import os, pkgutil, importlib; before = dict(os.environ)\n"
        "from flax import nnx; eager = nnx.using_eager_sharding()\n"
        "import mm1_jax\n"
        "for m in pkgutil.walk_packages(mm1_jax.__path__, 'mm1_jax.'):\n"
        "    if not m.name.endswith('__main__') and 'seqio' not in m.name:\n"
        "        importlib.import_module(m.name)\n"
        "changed = {k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k)}\n"
        "assert not changed, changed\n"
        "assert nnx.using_eager_sharding() == eager\n"
        "print('OK')\n")
    env = {k: v for k, v in os.environ.items() if k != "ALLOW_MULTIPLE_LIBTPU_LOAD"}
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stderr[-3000:]
