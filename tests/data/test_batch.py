"""One rule for targets and the loss mask (mm1_jax.data.batch), shared by the packer's batches
and the synthetic ones."""

import numpy as np

from experiments.demo_cpu import get_config
from mm1_jax.data import pipeline
from mm1_jax.data.batch import targets_and_loss_mask
from mm1_jax.data.tokenizer import SpecialIds, Tokenizer
from mm1_jax.train import synthetic
from tests.data import corpus as C

SP = SpecialIds(pad=0, bos=1, eos=2, image=3, image_start=4, image_end=5)


def _reference(tokens, segment_ids, special):
    """The rule, token by token: learn token t -> t+1 inside one item, except into or out of an
    image placeholder and into an image delimiter."""
    targets = np.full_like(tokens, special.pad)
    mask = np.zeros(tokens.shape, np.float32)
    image = (special.image_start, special.image, special.image_end)
    for r in range(tokens.shape[0]):
        for t in range(tokens.shape[1] - 1):
            if segment_ids[r, t] > 0 and segment_ids[r, t + 1] == segment_ids[r, t]:
                targets[r, t] = tokens[r, t + 1]
                mask[r, t] = tokens[r, t] != special.image and tokens[r, t + 1] not in image
    return targets, mask


def test_targets_and_loss_mask_by_hand():
    #            <s> <img> <image> x2 </img> a  </s> | <s>  b  </s> | pad pad
    tokens = [[1, 4, 3, 3, 5, 10, 2, 1, 11, 2, 0, 0],
              # one item filling the row: the last token has no target
              [1, 12, 13, 4, 3, 3, 5, 14, 15, 16, 17, 18]]
    seg = [[1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 0, 0], [1] * 12]
    targets, mask = targets_and_loss_mask(np.array(tokens), np.array(seg), SP)
    assert targets.tolist() == [[4, 3, 3, 5, 10, 2, 0, 11, 2, 0, 0, 0],
                                [12, 13, 4, 3, 3, 5, 14, 15, 16, 17, 18, 0]]
    # no loss predicting <img> (from <s>), <image> or </img>, from <image>, across items, on pad;
    # </img> -> text is learned
    assert mask.tolist() == [[0, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0]]
    assert mask.dtype == np.float32 and targets.dtype == np.asarray(tokens).dtype


def test_packed_and_synthetic_batches_follow_the_same_rule(corpus):
    d, _ = corpus
    cfg = C.config(d, prefetch=0)
    special = Tokenizer(cfg.data.tokenizer).special
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    packed = [next(it) for _ in range(5)]
    it.close()
    demo = get_config()
    fake = [synthetic.make_global_batch(demo, 0, i) for i in range(3)]
    for batches, sp in ((packed, special), (fake, synthetic.SPECIAL)):
        into_delimiter = 0
        for b in batches:
            targets, mask = _reference(b["tokens"], b["segment_ids"], sp)
            np.testing.assert_array_equal(b["targets"], targets)
            np.testing.assert_array_equal(b["loss_mask"], mask)
            into_delimiter += int(np.isin(b["targets"], (sp.image_start, sp.image_end)).sum())
        # both kinds of batch have tokens whose next token is an image delimiter (unlearned)
        assert into_delimiter > 0
