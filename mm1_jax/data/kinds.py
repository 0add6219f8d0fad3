"""The data kinds, declared once (no imports, so mm1_jax.config can read it without a cycle).

A batch's `kinds` array holds each token's kind id: 0 for padding, then `KIND_IDS[name]`.
"""

KINDS = ("interleaved", "caption", "text")
KIND_IDS = {name: i + 1 for i, name in enumerate(KINDS)}
