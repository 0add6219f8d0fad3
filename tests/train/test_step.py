"""train_step on the real demo model (one CPU device): freezing, gradient accumulation, the
non-finite guard, and the loop stopping on a streak of bad steps."""

import json
import os

import jax
import numpy as np
import pytest

from mm1_jax.startup import start
from mm1_jax.train.loop import TrainingError, compile_step, global_batch, train
from mm1_jax.train.optimizer import flatten_paths
from mm1_jax.train.state import abstract_train_state, init_train_state
from mm1_jax.data.synthetic import SPECIAL, SyntheticBatches, make_global_batch
from tests.helpers import NaNFrom


def _steps(cfg, batches):
    """The loop's own compiled step (so the loop test below reuses its compilation)."""
    run = start(cfg, special=SPECIAL, corpus=False)
    mesh = run.mesh
    abstract, shardings = abstract_train_state(run)
    state = init_train_state(run, abstract, shardings)
    init = jax.device_get(state.arrays())
    step, out = None, []
    for b in batches:
        b = global_batch(b, mesh)
        step = step or compile_step(abstract, shardings, mesh, b)[0]
        state, m = step(state, b)
        out.append(jax.device_get(m))
    return init, jax.device_get(state.arrays()), out


def test_frozen_parameters_do_not_move(demo_cfg):
    # The transfer recipe: encoder and decoder frozen, connector trained at 10x the rate.
    demo_cfg.optim.freeze = (r"^vision/", r"^decoder/")
    demo_cfg.optim.lr_mult = ((r"^connector/", 10.0),)
    init, final, metrics = _steps(demo_cfg, [make_global_batch(demo_cfg, 0, i) for i in range(2)])
    before, after = flatten_paths(init["params"]), flatten_paths(final["params"])
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    assert moved and all(p.startswith("connector/") for p in moved), sorted(moved)[:5]
    assert all(p in moved for p in before if p.startswith("connector/") and "kernel" in p)
    # No optimiser state for frozen parameters: the moments are exactly 2x the connector's size.
    connector = sum(x.size for p, x in before.items() if p.startswith("connector/"))
    assert sum(x.size for x in jax.tree.leaves(final["opt_state"]) if x.ndim) == 2 * connector
    assert all(m["opt/skipped"] == 0 for m in metrics)


def test_gradient_accumulation_is_the_same_objective(demo_cfg):
    batches = [make_global_batch(demo_cfg, 0, i) for i in range(2)]
    _, full, m_full = _steps(demo_cfg, batches)
    demo_cfg.train.grad_accum = 2
    _, accum, m_accum = _steps(demo_cfg, batches)
    for a, b in zip(m_full, m_accum):
        for key in ("loss/total", "loss/ce", "loss/caption", "opt/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=2e-5), key
    for p, x in flatten_paths(full["params"]).items():
        np.testing.assert_allclose(x, flatten_paths(accum["params"])[p], atol=2e-5, err_msg=p)


def test_fused_head_loss_is_the_plain_objective(demo_cfg):
    # model.loss_chunks: the chunked, fused head + cross-entropy against full logits then optax.
    batches = [make_global_batch(demo_cfg, 0, i) for i in range(2)]
    demo_cfg.model.loss_chunks = 0
    _, plain, m_plain = _steps(demo_cfg, batches)
    demo_cfg.model.loss_chunks = 4
    _, fused, m_fused = _steps(demo_cfg, batches)
    for a, b in zip(m_plain, m_fused):
        for key in ("loss/total", "loss/ce", "loss/caption", "loss/text", "opt/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=2e-5), key
    for p, x in flatten_paths(plain["params"]).items():
        np.testing.assert_allclose(x, flatten_paths(fused["params"])[p], atol=2e-5, err_msg=p)


def test_non_finite_step_is_skipped_and_counted(demo_cfg):
    good = make_global_batch(demo_cfg, 0, 0)
    bad = make_global_batch(demo_cfg, 0, 1)
    bad.loss_mask[0, 5] = np.nan  # a NaN loss (uint8 pixels cannot carry one)
    init, final, metrics = _steps(demo_cfg, [bad, bad])
    assert [m["opt/skipped"] for m in metrics] == [1, 1]
    assert [m["opt/bad_streak"] for m in metrics] == [1, 2]
    assert final["step"] == 2 and final["skipped_steps"] == 2
    jax.tree.map(np.testing.assert_array_equal, init["params"], final["params"])
    jax.tree.map(np.testing.assert_array_equal, init["opt_state"], final["opt_state"])
    _, _, metrics = _steps(demo_cfg, [bad, good])
    assert [m["opt/bad_streak"] for m in metrics] == [1, 0]
    # The skipped update did not advance the schedule: the good step uses the first rate.
    assert metrics[1]["opt/lr"] == pytest.approx(demo_cfg.optim.lr / demo_cfg.optim.warmup_steps)


def test_loop_stops_on_a_streak_of_non_finite_steps(demo_cfg, tmp_path):
    demo_cfg.train.max_bad_steps, demo_cfg.train.log_every = 3, 1  # steps as shipped: same program
    with pytest.raises(TrainingError, match=r"step 5: 3 consecutive steps had a non-finite"):
        train(demo_cfg, str(tmp_path), iterator=NaNFrom(demo_cfg, 2),
              special=SPECIAL)
    rows = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert [r["opt/skipped_total"] for r in rows] == [0, 0, 1, 2]


def _mismatched(cfg, index):
    """A synthetic batch whose row 0 claims one image fewer than its placeholders hold."""
    b = make_global_batch(cfg, 0, index)
    b.image_mask[0, b.image_mask[0].sum() - 1] = False
    return b


def test_placeholder_mismatch_refuses_the_update(demo_cfg):
    good = make_global_batch(demo_cfg, 0, 0)
    init, final, metrics = _steps(demo_cfg, [_mismatched(demo_cfg, 1)])
    assert metrics[0]["data/placeholder_mismatch"] == 1 and metrics[0]["opt/skipped"] == 1
    jax.tree.map(np.testing.assert_array_equal, init["params"], final["params"])
    jax.tree.map(np.testing.assert_array_equal, init["opt_state"], final["opt_state"])
    _, _, metrics = _steps(demo_cfg, [good])
    assert metrics[0]["data/placeholder_mismatch"] == 0 and metrics[0]["opt/skipped"] == 0


class _MismatchAt(SyntheticBatches):
    def __init__(self, cfg, at):
        super().__init__(cfg)
        self.at = at

    def __next__(self):
        if self.index == self.at:
            self.index += 1
            return _mismatched(self.cfg, self.index - 1)
        return super().__next__()


def test_loop_stops_at_the_mismatched_step_before_it_reaches_a_checkpoint(demo_cfg, tmp_path):
    """Batch 4 (step 5) disagrees with the model; checkpoints every 5 steps: the run stops
    naming step 5, and the newest checkpoint is the one before (nothing of that batch saved)."""
    import orbax.checkpoint as ocp

    demo_cfg.checkpoint.every, demo_cfg.checkpoint.async_save = 5, False
    demo_cfg.train.steps = 20  # same program; the run never gets there
    with pytest.raises(TrainingError, match=r"step 5: 1 rows of the batch have a number of image"):
        train(demo_cfg, str(tmp_path), iterator=_MismatchAt(demo_cfg, 4), special=SPECIAL)
    steps = ocp.utils.checkpoint_steps(str(tmp_path / "checkpoints"))
    assert 5 not in steps and all(s < 5 for s in steps), steps


def test_loop_counts_images_over_the_budget_and_mfu_counts_real_images(demo_cfg, tmp_path, caplog):
    """Budget 0.625 of 8 rows x 6 slots (30 images) on synthetic rows of 1..6 images: the loop
    logs the images left out per window (summed over its steps, as counted from the batches
    here) with a warning, and its model FLOPs count the real images, not the slots."""
    from mm1_jax.startup import abstract_model

    demo_cfg.model.image_budget, demo_cfg.train.steps, demo_cfg.train.log_every = 0.625, 4, 2
    masks = [make_global_batch(demo_cfg, 0, i).image_mask for i in range(4)]
    over = [max(int(m.sum()) - 30, 0) for m in masks]
    assert sum(over) > 0 and 0 in over  # some steps drop images, some do not
    with caplog.at_level("WARNING"):
        train(demo_cfg, str(tmp_path), iterator=SyntheticBatches(demo_cfg), special=SPECIAL)
    rows = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert [r["data/images_over_budget"] for r in rows] == [over[0] + over[1], over[2] + over[3]]
    assert [r["data/images"] for r in rows] == [int(masks[0].sum() + masks[1].sum()),
                                                int(masks[2].sum() + masks[3].sum())]
    warned = [r.getMessage() for r in caplog.records if "model.image_budget=0.625" in r.getMessage()]
    assert len(warned) == sum(o > 0 for o in (over[0] + over[1], over[2] + over[3])), warned
    stats = abstract_model(demo_cfg, SPECIAL).stats
    b, s = demo_cfg.train.batch_size, demo_cfg.train.seq_len
    for r in rows:  # per step: every decoder position + encoder per real image (2 steps/window)
        flops = b * s * stats.flops_per_token + r["data/images"] / 2 * stats.flops_per_image
        assert r["perf/model_flops_per_s"] * r["perf/step_time"] == pytest.approx(flops, rel=1e-6)
