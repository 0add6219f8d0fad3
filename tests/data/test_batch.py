"""The batch contract (mm1_jax.data.batch): one rule for targets and the loss mask, shared by
the packer's batches and the synthetic ones, and one `Batch` type that every producer builds."""

import dataclasses
import os
import re

import jax
import numpy as np
import pytest

from experiments.demo_cpu import get_config
from mm1_jax.data import pipeline
from mm1_jax.data.batch import (FIELDS, Batch, BatchError, batch_spec, check_batch,
                                targets_and_loss_mask)
from mm1_jax.data.tokenizer import SpecialIds, Tokenizer
from mm1_jax.data import synthetic
from tests.data import corpus as C
from tests.helpers import as_dict

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
            targets, mask = _reference(b.tokens, b.segment_ids, sp)
            np.testing.assert_array_equal(b.targets, targets)
            np.testing.assert_array_equal(b.loss_mask, mask)
            into_delimiter += int(np.isin(b.targets, (sp.image_start, sp.image_end)).sum())
        # both kinds of batch have tokens whose next token is an image delimiter (unlearned)
        assert into_delimiter > 0


# ------------------------------------------------------------------ one contract, every producer


def _described(spec: Batch) -> dict:
    return {name: (tuple(getattr(spec, name).shape), np.dtype(getattr(spec, name).dtype).name)
            for name in FIELDS}


def test_the_collator_synthetic_and_aot_batches_are_the_contract(corpus):
    """Keys, shapes and dtypes of the pipeline's collated batch, the synthetic batch and the
    batch the AOT command compiles the trainer's step for: exactly those of `batch_spec`."""
    from mm1_jax.aot import compile_train_step

    d, _ = corpus
    cfg = C.config(d, prefetch=0)
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=2)
    collated = next(it)
    it.close()
    rows = cfg.train.batch_size // 2
    assert _described(batch_spec(cfg, rows)) == {
        name: (tuple(getattr(collated, name).shape), getattr(collated, name).dtype.name)
        for name in FIELDS}
    check_batch(collated, batch_spec(cfg, rows), "the pipeline")

    demo = get_config()
    fake = synthetic.make_global_batch(demo, 0, 0)
    check_batch(fake, batch_spec(demo), "the synthetic batches")
    assert set(as_dict(fake)) == set(FIELDS)

    demo.train.batch_size, demo.train.seq_len, demo.model.decoder.depth = 2, 64, 1
    demo.data.max_images, demo.data.tokenizer, demo.evals = 1, None, {}
    compiled, _, _ = compile_train_step(demo, jax.devices()[:1])
    arg = compiled.args_info[0][1]  # (state, batch)
    assert isinstance(arg, Batch)
    assert {n: (tuple(getattr(arg, n).shape), np.dtype(getattr(arg, n).dtype).name)
            for n in FIELDS} == _described(batch_spec(demo))


def test_a_producer_that_breaks_the_contract_fails_loudly(corpus):
    """A missing field fails at construction; a wrong shape or a dict fails at the trainer's
    first batch, naming the field."""
    demo = get_config()
    fake = synthetic.make_global_batch(demo, 0, 0)
    kept = {k: v for k, v in as_dict(fake).items() if k != "kinds"}
    with pytest.raises(TypeError, match="kinds"):
        Batch(**kept)
    spec = batch_spec(demo)
    with pytest.raises(BatchError, match=r"Batch.images is uint8 \[8, 6, 16, 16, 3\].*"
                                         r"\[8, 6, 32, 32, 3\]"):
        check_batch(dataclasses.replace(fake, images=fake.images[:, :, ::2, ::2]), spec, "x")
    with pytest.raises(BatchError, match="yielded a dict, not a mm1_jax.data.batch.Batch"):
        check_batch(as_dict(fake), spec, "the data iterator")


def test_docs_describe_the_contract():
    """docs/data.md's batch table lists exactly the fields, dtypes and shapes of `Batch`."""
    letters = {"b": "b", "s": "S", "m": "M", "h": "H", "w": "W", "c": "3"}
    want = {f.name: (f"[{', '.join(letters[d] for d in f.metadata['dims'])}]",
                     f.metadata["dtype"]) for f in dataclasses.fields(Batch)}
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "data.md")).read()
    table = doc[doc.index("**Batch**"):].split("\n\n")[1]
    got = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        shape, dtype = cells[1].rsplit(" ", 1)
        for name in re.findall(r"`(\w+)`", cells[0]):
            got[name] = (shape, dtype)
    assert got == want
