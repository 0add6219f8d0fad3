import os
import subprocess
import sys

# Tests check numbers, not speed: XLA's backend at -O0 compiles the demo step in half the time
# and runs it about as fast on CPU. Set before jax creates its CPU client (subprocesses inherit it).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from mm1_jax.config import load_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> str:
    """One persistent XLA compilation cache for this test session, shared with subprocesses:
    the same step compiled twice (a run and its resumption) compiles once."""
    path = str(tmp_path_factory.getbasetemp().parent / "jax_cache")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    return path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> str:
    from mm1_jax.data.demo import ensure_demo_data

    return ensure_demo_data(str(tmp_path_factory.mktemp("demo_data")))


@pytest.fixture
def demo_cfg(compile_cache):
    """experiments/demo_cpu.py as shipped (synthetic batches: no tokenizer needed)."""
    cfg = load_config(os.path.join(ROOT, "experiments/demo_cpu.py"))
    cfg.data.tokenizer = None
    cfg.evals = {}  # no demo corpus behind synthetic batches
    cfg.train.compile_cache_dir = compile_cache
    return cfg


def run_python(args: list[str], *, devices: int = 1, timeout: float = 600, env: dict | None = None,
               compile_cache: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `python args...` from the repository root with `devices` simulated CPU devices."""
    e = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    e["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"
    if compile_cache:
        e["JAX_COMPILATION_CACHE_DIR"] = compile_cache
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=e, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p
