"""constraints.txt is what the suite runs with: every pinned package that is installed has its
pinned version, and every package mm1_jax needs (with its test and tpu extras, transitively)
is pinned, so `launch/*.sh` install on a fresh clone exactly what CI tested. With
`MM1_UNPINNED=1` (trying newer releases) the check does not apply and says so."""

import os
import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not pinned on purpose: torch is installed from its CPU wheel first (launch/setup_env.sh), and
# pods do not need it; pip's own tooling comes with the venv.
UNPINNED = {"torch", "pip", "setuptools", "wheel", "mm1-jax"}
EXTRAS = ("test", "tpu")

pytestmark = pytest.mark.skipif(os.environ.get("MM1_UNPINNED") == "1",
                                reason="MM1_UNPINNED=1: installed unpinned, on purpose")


def _pins() -> dict[str, str]:
    pins = {}
    for line in open(os.path.join(ROOT, "constraints.txt")):
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            pins[canonicalize_name(name)] = version
    return pins


def _needed() -> set[str]:
    """Canonical names of the installed distributions mm1_jax[test,tpu] requires, transitively."""
    seen, todo = set(), [("mm1_jax", frozenset(EXTRAS))]
    while todo:
        name, extras = todo.pop()
        for spec in metadata.requires(name) or ():
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                continue
            try:
                metadata.distribution(req.name)
            except metadata.PackageNotFoundError:
                continue  # an optional dependency of a dependency that is not installed
            node = (canonicalize_name(req.name), frozenset(req.extras))
            if node not in seen:  # jax and jax[tpu] are two nodes
                seen.add(node)
                todo.append((req.name, node[1]))
    return {name for name, _ in seen}


def test_installed_versions_are_the_pinned_ones():
    wrong = {}
    for name, version in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # e.g. the seqio extra's venv holds fewer packages
        if installed != version:
            wrong[name] = (installed, version)
    assert not wrong, f"installed vs constraints.txt: {wrong}; re-pin (pip freeze) or reinstall"


def test_every_needed_package_is_pinned():
    needed = _needed()
    assert {"jax", "flax", "grain", "orbax-checkpoint", "libtpu", "transformers"} <= needed
    missing = sorted(needed - set(_pins()) - UNPINNED)
    assert not missing, f"not in constraints.txt: {missing}"
