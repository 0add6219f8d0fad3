"""The CLIP encoder equals HF CLIPVisionModel with converted weights (the loading path for real
checkpoints, exercised on a small random model made here)."""

import numpy as np
import pytest
import jax.numpy as jnp
from flax import nnx

from mm1_jax.config import base_config, validate
from mm1_jax.convert.clip import clip_vision_params
from mm1_jax.convert.common import load_params
from tests.models import build

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _configs(feature_layer, act):
    hf = transformers.CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=28, patch_size=7,
                                       hidden_act=act, layer_norm_eps=1e-5)
    cfg = base_config()
    v = cfg.model.vision
    v.image_size, v.patch_size, v.width, v.depth, v.heads, v.mlp_dim = 28, 7, 48, 3, 4, 96
    v.act, v.feature_layer = act, feature_layer
    cfg.model.dtype = "float32"
    cfg.model.connector.num_tokens = 4
    return hf, validate(cfg)


@pytest.mark.parametrize("feature_layer,act", [(-1, "quick_gelu"), (-2, "gelu")])
def test_matches_hf_clip_vision(feature_layer, act):
    hf_cfg, cfg = _configs(feature_layer, act)
    torch.manual_seed(0)
    ref = transformers.CLIPVisionModel(hf_cfg).eval()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    enc = build.vision(cfg, rngs=nnx.Rngs(0))
    load_params(enc, clip_vision_params(sd, cfg))

    images = np.random.default_rng(0).normal(size=(2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        hs = ref(torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True).hidden_states
    want = hs[feature_layer][:, 1:].numpy()  # hidden_states[0] is the embedding output
    got = np.asarray(enc.forward(jnp.asarray(images)))
    assert got.shape == (2, 16, 48)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_other_resolution_resizes_position_grid():
    _, cfg = _configs(-1, "quick_gelu")
    enc = build.vision(cfg, rngs=nnx.Rngs(0))
    pos = np.asarray(enc.position_embedding(4))
    # Resizing to the trained grid is the identity; to 8x8 keeps CLS and interpolates the grid,
    # whose mean over positions is preserved by bicubic resizing up to edge effects.
    np.testing.assert_array_equal(np.asarray(enc.position_embedding(4)), np.asarray(enc.pos_embed[...]))
    big = np.asarray(enc.position_embedding(8))
    assert big.shape == (65, 48)
    np.testing.assert_array_equal(big[0], pos[0])
    assert enc(jnp.zeros((1, 56, 56, 3), jnp.uint8)).shape == (1, 64, 48)
    np.testing.assert_allclose(big[1:].mean(0), pos[1:].mean(0), atol=0.05)


def test_uint8_images_are_normalised_on_device_like_clip():
    """uint8 pixels (what the pipeline ships) give the same features as the CLIP-normalised floats."""
    _, cfg = _configs(-1, "quick_gelu")
    enc = build.vision(cfg, rngs=nnx.Rngs(0))
    pixels = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    v = cfg.model.vision
    normalised = (pixels / 255.0 - np.array(v.mean)) / np.array(v.std)  # CLIP preprocessing
    np.testing.assert_allclose(np.asarray(enc(jnp.asarray(pixels))),
                               np.asarray(enc.forward(jnp.asarray(normalised, jnp.float32))),
                               rtol=1e-5, atol=1e-5)


def test_float_images_are_an_error_not_a_guess():
    """One image contract: every reader ships uint8; a float array is refused rather than taken
    as already normalised."""
    _, cfg = _configs(-1, "quick_gelu")
    enc = build.vision(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="uint8"):
        enc(jnp.zeros((1, 28, 28, 3), jnp.float32))
