"""Mixing by sequence (data.mix_level = "sequence"): each kind is packed alone and the packed rows
are mixed, so the weights are shares of training sequences (MM1 section 4, AXLearn's mixing of
packed sources). On the realistic-length corpus (benchmarks/corpus.py) mixing items instead gives
a caption share of about 11% of rows and tokens for a weight of 45% (issue 8)."""

import numpy as np
import pytest

from benchmarks import corpus as realistic
from benchmarks.data_mixture import measure, shares
from mm1_jax.config import ConfigError, base_config, validate
from mm1_jax.data import pipeline
from mm1_jax.data.kinds import KINDS
from tests.data import corpus as C
from tests.helpers import as_dict

WEIGHTS = {"interleaved": 0.45, "caption": 0.45, "text": 0.10}


def _rows(cfg, n_batches):
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    try:
        return [{k: v[r] for k, v in as_dict(b).items()} for b in (next(it) for _ in range(n_batches))
                for r in range(len(b.tokens))]
    finally:
        it.close()


def test_mixed_rows_are_each_kind_packed_alone_then_interleaved_by_weight(corpus):
    d, _ = corpus
    mixed = _rows(C.config(d, prefetch=0, mixture=WEIGHTS), 50)  # 200 rows
    kinds = []
    for row in mixed:
        present = set(np.unique(row["kinds"][row["segment_ids"] > 0]).tolist())
        assert len(present) == 1, present  # a row holds one kind only
        kinds.append(KINDS[present.pop() - 1])
    # Grain's proportional interleave: after n rows, kind k has had floor-or-ceil of n * w_k
    for n in range(1, len(kinds) + 1):
        for k, w in WEIGHTS.items():
            assert abs(kinds[:n].count(k) - n * w) < 1 + 1e-9, (n, k)
    # ... and the rows of each kind are exactly those of that kind's pipeline alone
    for k in KINDS:
        mine = [row for row, kind in zip(mixed, kinds) if kind == k]
        alone = _rows(C.config(d, prefetch=0, mixture={k: 1.0}), (len(mine) + 3) // 4)
        for got, want in zip(mine, alone):
            for key in ("tokens", "targets", "loss_mask", "segment_ids", "images"):
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{k} {key}")


@pytest.fixture(scope="module")
def realistic_corpus(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("realistic"))
    realistic.build(d, n=1000)
    return d


@pytest.mark.parametrize("rows", [1000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_sequence_mixing_gives_the_weights_as_shares_of_rows(realistic_corpus, rows):
    r = measure(realistic_corpus, "sequence", rows, mixture=WEIGHTS)
    got_rows, got_tokens = shares(r["rows"]), shares(r["tokens"])
    for k, w in WEIGHTS.items():
        assert r["pure_rows"][k] == r["rows"][k]  # every row is of one kind
        assert abs(got_rows[k] - w) < 0.01, (k, got_rows)
    # Share of tokens. Counted as sequence positions (seq_len per row, what a step computes on),
    # it is the share of rows. Counted as non-pad tokens it is w_k * fill_k / sum_j w_j * fill_j:
    # caption rows stop at the 16-image budget (16 x 146 image tokens + ~20 text tokens each,
    # 65% of 4096), so 45% of rows carry ~36% of the non-pad tokens, as in MM1's own recipe.
    # The fill per kind comes from each kind packed alone with another seed (other rows).
    fill = {}
    for k in WEIGHTS:
        alone = measure(realistic_corpus, "sequence", 320, mixture={k: 1.0}, seed=1)
        fill[k] = alone["tokens"][k] / alone["rows"][k]
    norm = sum(WEIGHTS[k] * fill[k] for k in WEIGHTS)
    for k, w in WEIGHTS.items():
        assert abs(got_tokens[k] - w * fill[k] / norm) < 0.01, (k, got_tokens, fill)


def test_item_mixing_misses_the_weights_on_realistic_lengths(realistic_corpus):
    # The defect of issue 8 (data.mix_level = "item"): items differ ~7x in length, so 45% of the
    # items are captions but they fill ~11% of the rows and tokens.
    r = measure(realistic_corpus, "item", 800, mixture=WEIGHTS)
    got_rows, got_tokens = shares(r["rows"]), shares(r["tokens"])
    assert 0.08 < got_rows["caption"] < 0.15 and 0.08 < got_tokens["caption"] < 0.15
    assert got_tokens["interleaved"] > 0.7
    assert r["pure_rows"]["caption"] < 0.1 * r["rows"]["caption"]  # captions share their rows



def test_an_unknown_mix_level_names_the_key():
    cfg = base_config()
    cfg.data.mix_level = "packed"
    with pytest.raises(ConfigError, match=r"config.data.mix_level: 'packed' is not one of"):
        validate(cfg)
