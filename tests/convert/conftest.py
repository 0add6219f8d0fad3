# The training tests' session compile cache (and their XLA flags) serve the transfer tests too.
from tests.train.conftest import compile_cache  # noqa: F401
