"""Which kernel each layer runs, as a value handed to the layers.

`config.model.attention` and `config.model.moe.grouped_matmul` may say "auto"; start-up
(`mm1_jax.startup.resolve_kernels`), where the devices are known, turns them into a `Kernels`
of concrete implementations, and the model is built with it. No layer looks at the platform:
the same layer code runs splash on a TPU and XLA on a laptop because it was handed a
different value. A model built without one (tests, converters, summaries) runs the portable
XLA kernels.
"""

from __future__ import annotations

import dataclasses

ATTENTION_KERNELS = ("xla", "splash", "cudnn")  # models/attention.py
GROUPED_MATMUL_KERNELS = ("xla", "megablox")  # models/moe.py


@dataclasses.dataclass(frozen=True)
class Kernels:
    """Concrete kernels (hashable: part of the model's static structure)."""

    attention: str = "xla"  # one of ATTENTION_KERNELS
    grouped_matmul: str = "xla"  # one of GROUPED_MATMUL_KERNELS: the dropless MoE's matmuls
    # Pallas kernels (splash, megablox) in interpret mode: they are TPU kernels, and on CPU they
    # run interpreted, for tests.
    interpret: bool = False

    def __post_init__(self):
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention kernel {self.attention!r} is not one of "
                             f"{ATTENTION_KERNELS} (resolve 'auto' at start-up)")
        if self.grouped_matmul not in GROUPED_MATMUL_KERNELS:
            raise ValueError(f"grouped matmul {self.grouped_matmul!r} is not one of "
                             f"{GROUPED_MATMUL_KERNELS} (resolve 'auto' at start-up)")


PORTABLE = Kernels()
