"""Vision towers through the command: HF CLIPVisionModel, HF CLIPModel and OpenCLIP, compared
with the PyTorch model on the same pixels, at the checkpoint's resolution and at another one
(PyTorch's position embedding resized by torch.nn.functional.interpolate)."""

import numpy as np
import pytest
import jax.numpy as jnp

from mm1_jax.config import base_config
from mm1_jax.convert.__main__ import main
from mm1_jax.models.layers import resize_pos_grid
from tests.convert.helpers import load_converted, open_clip_transformer, save_hf, save_open_clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
F = torch.nn.functional

WIDTH, PATCH, SIZE = 48, 7, 28  # a 4x4 grid


def _torch_resized(pos: "torch.Tensor", grid: int) -> "torch.Tensor":
    """[1 + g*g, d] -> [1 + grid*grid, d], bicubic by PyTorch (what timm / HF do)."""
    g = int(round((pos.shape[0] - 1) ** 0.5))
    patch = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid * grid, -1)])


def _pixels(size):
    return np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)


def _ours(out, size):
    enc, _ = load_converted(out, "vision", base_config())
    return np.asarray(enc.forward(jnp.asarray(_pixels(size))))  # normalised floats, as HF takes


def _hf_vision(kind, act):
    vc = dict(hidden_size=WIDTH, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              image_size=SIZE, patch_size=PATCH, hidden_act=act, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    if kind == "CLIPModel":
        cfg = transformers.CLIPConfig(vision_config=vc, text_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            vocab_size=99), projection_dim=16)
        model = transformers.CLIPModel(cfg).eval()
        return model, model.vision_model
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vc)).eval()
    return model, getattr(model, "vision_model", model)  # transformers 5 flattened it


@pytest.mark.parametrize("kind,act,feature_layer,size", [
    ("CLIPVisionModel", "quick_gelu", -1, SIZE),
    ("CLIPVisionModel", "gelu", -2, 49),  # 7x7 grid: positions resized
    ("CLIPModel", "quick_gelu", -2, SIZE),
    ("CLIPModel", "quick_gelu", -1, 21),  # 3x3 grid: resized down
])
def test_hf_clip(tmp_path, kind, act, feature_layer, size):
    model, vision = _hf_vision(kind, act)
    src = save_hf(model, str(tmp_path / "hf"))
    main(["vision", "--src", src, "--out", str(tmp_path / "ours"), "--image_size", str(size),
          "--feature_layer", str(feature_layer)])

    emb = vision.embeddings
    if size != SIZE:  # what HF's interpolate_pos_encoding does, with the grid given explicitly
        with torch.no_grad():
            new = _torch_resized(emb.position_embedding.weight, size // PATCH)
        emb.position_embedding = torch.nn.Embedding.from_pretrained(new)
        emb.num_patches, emb.num_positions = (size // PATCH) ** 2, new.shape[0]
        emb.image_size = size
        emb.register_buffer("position_ids", torch.arange(new.shape[0])[None], persistent=False)
    with torch.no_grad():
        hs = vision(torch.from_numpy(_pixels(size).transpose(0, 3, 1, 2)),
                    output_hidden_states=True).hidden_states
    want = hs[feature_layer][:, 1:].numpy()  # hidden_states[0] is the embedding output
    got = _ours(str(tmp_path / "ours"), size)
    assert got.shape == want.shape == (2, (size // PATCH) ** 2, WIDTH)
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("quick_gelu,feature_layer,size", [(True, -1, SIZE), (False, -2, 35)])
def test_open_clip(tmp_path, quick_gelu, feature_layer, size):
    VisionTransformer = open_clip_transformer()
    if VisionTransformer is None:
        pytest.skip("open-clip-torch is not installed (test extra)")
    from open_clip.transformer import QuickGELU

    torch.manual_seed(0)
    vcfg = {"image_size": SIZE, "patch_size": PATCH, "width": WIDTH, "layers": 3, "head_width": 12,
            "mlp_ratio": 2.0}
    visual = VisionTransformer(image_size=SIZE, patch_size=PATCH, width=WIDTH, layers=3, heads=4,
                               mlp_ratio=2.0, output_dim=16,
                               act_layer=QuickGELU if quick_gelu else torch.nn.GELU).eval()
    with torch.no_grad():  # OpenCLIP initialises some of these to zeros / ones; make them count
        for p in visual.parameters():
            p.add_(0.02 * torch.randn_like(p))
    src = save_open_clip(visual, {"embed_dim": 16, "quick_gelu": quick_gelu, "vision_cfg": vcfg},
                         str(tmp_path / "oc"))
    main(["vision", "--src", src, "--out", str(tmp_path / "ours"), "--image_size", str(size),
          "--feature_layer", str(feature_layer)])

    if size != SIZE:
        with torch.no_grad():
            visual.positional_embedding = torch.nn.Parameter(
                _torch_resized(visual.positional_embedding, size // PATCH))
    outs = []
    hooks = [blk.register_forward_hook(lambda m, i, o: outs.append(o))
             for blk in visual.transformer.resblocks]
    with torch.no_grad():
        visual(torch.from_numpy(_pixels(size).transpose(0, 3, 1, 2)))
    for h in hooks:
        h.remove()
    want = outs[feature_layer][:, 1:].numpy()  # [b, 1 + g*g, d], batch first in OpenCLIP 2+
    got = _ours(str(tmp_path / "ours"), size)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("src_grid,grid", [(4, 7), (7, 3), (24, 27), (27, 27)])
def test_position_resize_is_pytorch_bicubic(src_grid, grid):
    pos = np.random.default_rng(1).normal(size=(1 + src_grid**2, 8)).astype(np.float32)
    want = _torch_resized(torch.from_numpy(pos), grid).numpy()[1:].reshape(grid, grid, 8)
    got = resize_pos_grid(pos[1:].reshape(src_grid, src_grid, 8), grid)
    assert np.abs(got - want).max() <= 1e-5
    # jax.image.resize (a = -0.5, antialiased) is measurably different: the test can fail.
    import jax

    other = np.asarray(jax.image.resize(pos[1:].reshape(src_grid, src_grid, 8), (grid, grid, 8), "bicubic"))
    assert src_grid == grid or np.abs(other - want).max() > 1e-3


def test_unsupported_open_clip_feature_is_named(tmp_path):
    from mm1_jax.convert.clip import openclip_arch

    with pytest.raises(ValueError, match="ls_init_value"):
        openclip_arch({"model_cfg": {"vision_cfg": {"ls_init_value": 1e-5}}})
