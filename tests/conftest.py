"""Process-wide settings of the test session, set before JAX first loads a backend."""

import os

from mm1_jax.aot import SHARE_LIBTPU

# Tests compile for TPU topologies (no TPU is opened) in several processes at once (xdist
# workers, subprocesses): none may hold libtpu's one-process-per-host lock.
os.environ.setdefault(*SHARE_LIBTPU)
