"""Every experiment config: sizes against the paper, eta(N), and a train-like step that traces
abstractly (jax.eval_shape: nothing is allocated, so the 64B MoE traces on a laptop)."""

import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mm1_jax.config import ConfigError, base_config, load_config, peak_lr, validate
from mm1_jax.data.batch import batch_spec
from mm1_jax.startup import abstract_model
from mm1_jax.data.synthetic import SPECIAL
from mm1_jax.models.mm1 import MM1Model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
                     if not os.path.basename(p).startswith("_"))

def _stats(cfg):
    return abstract_model(cfg, SPECIAL, with_image_flops=False).stats.as_dict()


def exp(name):
    return load_config(os.path.join(ROOT, "experiments", f"{name}.py"))


def test_eta_matches_mm1_formula():
    assert f"{peak_lr(3e10):.1e}" == "2.2e-05"  # MM1 section 4: N = 3e10 gives 2.2e-5
    # Independent evaluation of exp(-0.4214 ln N - 0.5535) = e^-0.5535 * N^-0.4214.
    assert peak_lr(1.2e9) == pytest.approx(np.exp(-0.5535) * 1.2e9 ** -0.4214, rel=1e-12)


@pytest.mark.parametrize("name,target,tol", [("mm1_3b_moe", 64e9, 0.03), ("mm1_7b_moe", 47e9, 0.03)])
def test_moe_totals_match_paper(name, target, tol):
    s = _stats(exp(name))
    assert abs(s["total"] / target - 1) < tol, s["total"]


@pytest.mark.parametrize("name,target", [("mm1_3b", 3e9), ("mm1_7b", 7e9), ("mm1_30b", 30e9)])
def test_dense_decoders_match_names(name, target):
    s = _stats(exp(name))
    assert abs(s["decoder"] / target - 1) < 0.10, s["decoder"]


def test_vit_h_378_encoder_size():
    s = _stats(exp("mm1_3b"))
    assert abs(s["vision"] / 632e6 - 1) < 0.01, s["vision"]
    # Independent count of the CLIP layout: conv (no bias) + CLS + 730 positions + ln_pre + 32 blocks.
    w, f, L, p = 1280, 5120, 32, 14
    block = 4 * (w * w + w) + (w * f + f) + (f * w + w) + 4 * w
    assert s["vision"] == 3 * p * p * w + w + 730 * w + 2 * w + L * block


def test_moe_active_parameters():
    cfg = exp("mm1_3b_moe")
    s = _stats(cfg)
    d = cfg.model.decoder
    expert = 3 * d.width * d.mlp_dim
    n_moe = d.depth // cfg.model.moe.every
    # Each MoE layer holds 64 experts, a token uses 2 of them.
    assert s["total"] - s["active"] == n_moe * (64 - 2) * expert
    assert s["lr_params"] == s["non_embedding"] - s["vision"] - s["connector"] - n_moe * (63 * expert + d.width * 64)


def _train_like_step(cfg, batch):
    model = MM1Model(cfg.model, image_token_id=SPECIAL.image, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)

    def loss_fn(model):
        logits, aux = model(batch)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch.targets)
        return (ce * batch.loss_mask).sum() / batch.loss_mask.sum() + aux["moe/aux_loss"]

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: os.path.basename(p)[:-3])
def test_train_like_step_traces_abstractly(path):
    cfg = load_config(path)
    loss = jax.eval_shape(lambda b: _train_like_step(cfg, b), batch_spec(cfg, rows=1))
    assert loss.shape == () and loss.dtype == jnp.float32


def test_summary_cli_json():
    out = subprocess.run([sys.executable, "-m", "mm1_jax.summary", "--config=experiments/mm1_7b_moe.py", "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    stats = json.loads(out.strip().splitlines()[-1])
    assert {"total", "vision", "connector", "decoder", "non_embedding", "active"} <= set(stats)
    assert stats["total"] == stats["vision"] + stats["connector"] + stats["decoder"]
    assert stats["peak_lr"] == pytest.approx(peak_lr(stats["lr_params"]))


@pytest.mark.parametrize("key,value,message", [
    ("model.decoder.heads", 7, "do not divide"),
    ("model.vision.heads", 5, "do not divide width"),
    ("model.connector.num_tokens", 99, "not a square"),
    ("model.connector.kind", "qformer", "unknown connector"),
    ("model.vision.feature_layer", 40, "feature_layer"),
])
def test_config_errors_name_the_key(key, value, message):
    cfg = base_config()
    section, _, field = key.rpartition(".")
    cfg[section.split(".")[0]][section.split(".")[1]][field] = value
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg)
    assert key.rsplit(".", 1)[0] in str(err.value)


@pytest.mark.parametrize("budget", [0.0, -0.5, 1.5])
def test_image_budget_must_be_a_share_of_the_slots(budget):
    cfg = base_config()
    cfg.model.image_budget = budget
    with pytest.raises(ConfigError, match=r"config\.model\.image_budget: .* must be in \(0, 1\]"):
        validate(cfg)
    for ok in (None, 0.05, 1.0):
        cfg.model.image_budget = ok
        validate(cfg)


def test_moe_period_must_divide_depth():
    cfg = base_config()
    cfg.model.moe.num_experts, cfg.model.moe.every = 8, 5  # depth 24
    with pytest.raises(ConfigError, match="model.moe.every"):
        validate(cfg)
