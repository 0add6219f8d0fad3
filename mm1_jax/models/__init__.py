"""Models: CLIP ViT encoder, connectors, dense/MoE decoder and the MM1 model that joins them."""

from flax import nnx

# Parameters carry logical axis names only; the training code resolves them against a mesh
# (mm1_jax/sharding.py) and places the state with jit out_shardings. Eager sharding would
# instead demand a mesh at construction time, which tests and `python -m mm1_jax.summary` do not have.
nnx.use_eager_sharding(False)
