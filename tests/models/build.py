"""Builds one module of a full experiment config the way MM1Model does, for tests that check a
layer on its own (each module receives only its part of the config), with the kernels start-up
would resolve for this machine's devices."""

import jax
from flax import nnx

from mm1_jax.config import expert_mlp_dim
from mm1_jax.models import layers
from mm1_jax.models import mm1 as mm1_lib
from mm1_jax.models.kernels import Kernels
from mm1_jax.models.moe import MoEFeedForward
from mm1_jax.data.synthetic import SPECIAL
from mm1_jax.startup import resolve_kernels


def kernels(cfg) -> Kernels:
    """What start-up resolves `cfg.model.attention` / `moe.grouped_matmul` to here."""
    return resolve_kernels(cfg.model, jax.default_backend())


def vision(cfg, rngs=None):
    return mm1_lib.vision_encoder(cfg.model, rngs or nnx.Rngs(0))


def connector(cfg, rngs=None):
    return mm1_lib.connector(cfg.model, rngs or nnx.Rngs(0))


def decoder(cfg, rngs=None):
    return mm1_lib.decoder(cfg.model, rngs or nnx.Rngs(0), kernels(cfg))


def moe(cfg, rngs=None) -> MoEFeedForward:
    """A bare MoE layer (MM1Model builds it inside a decoder block, from the same fields)."""
    d, m = cfg.model.decoder, cfg.model.moe
    dt, pdt = layers.dtypes(cfg.model)
    return MoEFeedForward(m, width=d.width, mlp_dim=expert_mlp_dim(d, m), dtype=dt,
                          param_dtype=pdt, rngs=rngs or nnx.Rngs(0), kernels=kernels(cfg))


def mm1(cfg, rngs=None, image_token_id: int = SPECIAL.image) -> mm1_lib.MM1Model:
    return mm1_lib.MM1Model(cfg.model, image_token_id=image_token_id, rngs=rngs or nnx.Rngs(0),
                            kernels=kernels(cfg))
