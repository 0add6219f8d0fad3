"""Builds one module of a full experiment config the way MM1Model does, for tests that check a
layer on its own (each module receives only its part of the config)."""

from flax import nnx

from mm1_jax.config import expert_mlp_dim, vision_grid
from mm1_jax.models import layers
from mm1_jax.models.connector import build_connector
from mm1_jax.models.decoder import Decoder
from mm1_jax.models.mm1 import MM1Model
from mm1_jax.models.moe import MoEFeedForward
from mm1_jax.models.vision import VisionEncoder
from mm1_jax.train.synthetic import SPECIAL


def _dt(cfg):
    dt, pdt = layers.dtypes(cfg.model)
    return dict(dtype=dt, param_dtype=pdt)


def vision(cfg, rngs=None) -> VisionEncoder:
    return VisionEncoder(cfg.model.vision, remat=cfg.model.remat, rngs=rngs or nnx.Rngs(0),
                         **_dt(cfg))


def connector(cfg, rngs=None):
    m = cfg.model
    return build_connector(m.connector, vision_width=m.vision.width,
                           vision_grid=vision_grid(m.vision), width=m.decoder.width,
                           rngs=rngs or nnx.Rngs(0), **_dt(cfg))


def decoder(cfg, rngs=None) -> Decoder:
    return Decoder(cfg.model.decoder, cfg.model.moe, remat=cfg.model.remat,
                   rngs=rngs or nnx.Rngs(0), **_dt(cfg))


def moe(cfg, rngs=None) -> MoEFeedForward:
    d, m = cfg.model.decoder, cfg.model.moe
    return MoEFeedForward(m, width=d.width, mlp_dim=expert_mlp_dim(d, m),
                          rngs=rngs or nnx.Rngs(0), **_dt(cfg))


def mm1(cfg, rngs=None, image_token_id: int = SPECIAL.image) -> MM1Model:
    return MM1Model(cfg.model, image_token_id=image_token_id, rngs=rngs or nnx.Rngs(0))
