"""Training through the real Grain pipeline mixes by sequence: the trainer's `data/<kind>_tokens`
metrics (loss tokens per kind, mm1_jax/train/step.py) follow the sequence weights."""

import json
import os

import numpy as np
import pytest

from mm1_jax.data import pipeline
from mm1_jax.train.loop import train
from tests.data import corpus as C

WEIGHTS = {"interleaved": 0.45, "caption": 0.45, "text": 0.10}
STEPS, BATCH = 30, 8


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("corpus"))
    C.build(d)
    return d


def _loss_tokens_per_row(d: str, kind: str, rows: int) -> np.ndarray:
    """Loss tokens of each of `rows` rows of `kind` packed alone (another seed: other rows)."""
    cfg = C.config(d, prefetch=0, mixture={kind: 1.0}, shuffle_seed=1)
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    try:
        return np.concatenate([next(it).loss_mask.sum(1) for _ in range(rows // 4)])
    finally:
        it.close()


def test_per_kind_token_metrics_follow_the_sequence_weights(small_corpus, tmp_path, compile_cache):
    cfg = C.config(small_corpus, mixture=WEIGHTS)
    # Logged every 5 steps: data/ counts are sums over the log window, so the rows still add up
    # to every step's tokens.
    cfg.train.batch_size, cfg.train.steps, cfg.train.log_every = BATCH, STEPS, 5
    cfg.evals = {}
    cfg.train.compile_cache_dir = compile_cache
    cfg.checkpoint.every = 10 * STEPS
    train(cfg, str(tmp_path))
    logged = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert [m["step"] for m in logged] == list(range(5, STEPS + 1, 5))  # every window logged
    got = {k: sum(m[f"data/{k}_tokens"] for m in logged) for k in WEIGHTS}
    total = sum(got.values())

    # With rows mixed by weight, n_k = w_k * N of the N = 240 trained rows are of kind k (Grain's
    # interleave is exact up to one row), and a row of kind k carries L_k loss tokens on average,
    # so the share of loss tokens is w_k L_k / sum_j w_j L_j. L_k and its spread s_k come from
    # 400 rows of each kind packed alone with another seed. What the sample size leaves open:
    # the sum over n_k rows varies by sqrt(n_k) s_k, plus n_k s_k / sqrt(400) from estimating
    # L_k; the delta method turns these into the share's standard deviation. Tolerance: 4 of
    # them, plus one row of interleave rounding: 0.02-0.03 here, against shares of 0.45 / 0.39 /
    # 0.16. Mixing items instead (data.mix_level = "item") gives 0.56 / 0.22 / 0.21 on these
    # rows, far outside.
    per_row = {k: _loss_tokens_per_row(small_corpus, k, 400) for k in WEIGHTS}
    n_rows = STEPS * BATCH
    mean = {k: WEIGHTS[k] * n_rows * per_row[k].mean() for k in WEIGHTS}  # E[X_k]
    var = {k: WEIGHTS[k] * n_rows * per_row[k].var() * (1 + WEIGHTS[k] * n_rows / 400)
           for k in WEIGHTS}
    t = sum(mean.values())
    for k in WEIGHTS:
        want = mean[k] / t
        sd = np.sqrt(sum(((t - mean[k]) if j == k else -mean[k]) ** 2 * var[j]
                         for j in WEIGHTS)) / t**2
        tol = 4 * sd + max(per_row[j].mean() for j in WEIGHTS) / t
        assert abs(got[k] / total - want) < tol, (k, got[k] / total, want, tol)
