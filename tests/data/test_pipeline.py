"""The Grain pipeline end to end: batch schema, packing rules, round trips, mixture weights."""

import collections
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from mm1_jax.config import ConfigError, validate
from mm1_jax.data import pipeline, records
from mm1_jax.data.kinds import KIND_IDS, KINDS
from mm1_jax.data.tokenizer import Tokenizer
from mm1_jax.models.vision import normalize_images
from tests.data import corpus as C
from tests.helpers import as_dict


def _take(cfg, n):
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def _clip_reference(data: bytes, mean, std) -> np.ndarray:
    """CLIP preprocessing by the transformers reference: [S, S, 3] float32."""
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": C.IMAGE_SIZE},
                              crop_size={"height": C.IMAGE_SIZE, "width": C.IMAGE_SIZE},
                              image_mean=list(mean), image_std=list(std), do_convert_rgb=True)
    im = Image.open(io.BytesIO(data))
    return proc(im, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


def test_packed_batches_follow_the_rules(corpus):
    d, recs = corpus
    cfg = C.config(d)
    tok = Tokenizer(cfg.data.tokenizer)
    T, S, M = C.TOKENS_PER_IMAGE, C.SEQ_LEN, C.MAX_IMAGES
    image_tokens = [tok.image_start_id, tok.image_id, tok.image_end_id]
    batches = _take(cfg, 12)
    seen = collections.Counter()
    max_pixel_err = 0.0
    for b in batches:
        assert {k: (v.shape, v.dtype.name) for k, v in as_dict(b).items()} == {
            "tokens": ((4, S), "int32"), "targets": ((4, S), "int32"),
            "loss_mask": ((4, S), "float32"), "segment_ids": ((4, S), "int32"),
            "positions": ((4, S), "int32"), "kinds": ((4, S), "int32"),
            "images": ((4, M, C.IMAGE_SIZE, C.IMAGE_SIZE, 3), "uint8"),
            "image_mask": ((4, M), "bool"), "truncated": ((4,), "int32"),
            "dropped": ((4,), "int32")}
        for row in range(4):
            tokens, seg = b.tokens[row], b.segment_ids[row]
            pad = seg == 0
            assert (tokens[pad] == tok.pad_id).all() and (b.kinds[row][pad] == 0).all()
            assert (b.loss_mask[row][pad] == 0).all()
            # every image is one whole block inside one segment: <img> <image> x T </img>
            starts = np.flatnonzero(tokens == tok.image_start_id)
            for s in starts:
                assert (tokens[s + 1:s + 1 + T] == tok.image_id).all()
                assert tokens[s + T + 1] == tok.image_end_id
                assert len(set(seg[s:s + T + 2])) == 1
            assert (tokens == tok.image_id).sum() == T * len(starts)
            n_img = len(starts)
            assert n_img <= M and b.image_mask[row].sum() == n_img
            assert b.image_mask[row][:n_img].all()
            assert (b.images[row][n_img:] == 0).all()

            img_k = 0
            for _, sl in C.segments(b, row):
                t, tg = tokens[sl], b.targets[row][sl]
                np.testing.assert_array_equal(b.positions[row][sl], np.arange(len(t)))
                np.testing.assert_array_equal(tg[:-1], t[1:])
                mask = np.ones(len(t), np.float32)
                mask[np.isin(tg, image_tokens) | (t == tok.image_id)] = 0
                mask[-1] = 0  # would predict the next document
                np.testing.assert_array_equal(b.loss_mask[row][sl], mask)

                rec = C.record_of(t, tok, recs)
                seen[rec.kind] += 1
                assert (b.kinds[row][sl] == KIND_IDS[rec.kind]).all()
                pieces, n = C.text_pieces(t, tok)
                want = [tok.encode(x) for x in rec.texts]
                if t[-1] == tok.eos_id:  # whole item: every text decodes back exactly
                    assert [tok.decode(p) for p in pieces] == rec.texts
                    assert n == rec.num_images
                else:  # cut in its text: whole texts, then a prefix of the next one
                    assert pieces[:-1] == want[:len(pieces) - 1]
                    last = want[len(pieces) - 1]
                    assert pieces[-1] == last[:len(pieces[-1])]
                    assert n <= min(rec.num_images, M)
                for seg_ in [s_ for s_ in rec.segments if "image" in s_][:n]:
                    ref = _clip_reference(seg_["image"], cfg.model.vision.mean,
                                          cfg.model.vision.std)
                    # the model's on-device normalisation of the pipeline's uint8 pixels
                    got = normalize_images(b.images[row, img_k], cfg.model.vision.mean,
                                           cfg.model.vision.std)
                    err = np.abs(np.asarray(got) - ref)
                    max_pixel_err = max(max_pixel_err, float(err.mean()))
                    img_k += 1
            assert img_k == n_img
    assert set(seen) == set(KINDS)
    # the crop-in-resize and CLIP's resize-then-crop agree up to resampling rounding; another
    # image (wrong order) would be off by > 0.3 on average
    assert max_pixel_err < 0.05
    assert sum(int(b.truncated.sum()) for b in batches) > 0  # the corpus plants long items


@pytest.mark.parametrize("weights", [(0.45, 0.45, 0.10)])
def test_item_level_mixture_weights_are_shares_of_items(corpus, weights):
    # data.mix_level = "item" (the old behaviour): 10,000 items, mixed before packing
    d, _ = corpus
    cfg = C.config(d, prefetch=0, mix_level="item")
    cfg.data.mixture = dict(zip(KINDS, weights))
    cfg.train.batch_size = 64
    counts = collections.Counter()
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    while sum(counts.values()) < 10_000:
        b = next(it)
        starts = (b.positions == 0) & (b.segment_ids > 0)
        counts.update(b.kinds[starts].tolist())
    total = sum(counts.values())
    for k, w in enumerate(weights):
        assert abs(counts[k + 1] / total - w) < 0.01, (counts, weights)


def test_zero_weight_kind_is_left_out(corpus):
    d, _ = corpus
    cfg = C.config(d, prefetch=0)
    cfg.data.mixture = {"interleaved": 0.5, "caption": 0.5, "text": 0.0}
    kinds = np.concatenate([b.kinds.ravel() for b in _take(cfg, 20)])
    assert set(np.unique(kinds)) == {0, 1, 2}


def test_config_errors_name_the_key(corpus, tmp_path):
    d, _ = corpus
    cfg = C.config(str(tmp_path))
    cfg.data.tokenizer = C.config(d).data.tokenizer
    with pytest.raises(ConfigError, match=r"config.data.dir: no shards .*interleaved.*mm1_jax.data.convert"):
        pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    cfg = C.config(d)
    cfg.train.batch_size = 6
    with pytest.raises(ConfigError, match=r"config.train.batch_size: 6 .* 4 processes"):
        pipeline.make_iterator(cfg, shard_index=0, shard_count=4)
    cfg = C.config(d, interpolation="cubic")
    with pytest.raises(ConfigError, match=r"config.data.interpolation"):
        validate(cfg)  # a static check: config.validate, run first by start-up


def test_a_broken_record_is_named_by_shard_and_index(corpus, tmp_path):
    from array_record.python import array_record_module

    d, _ = corpus
    shutil.copytree(os.path.join(d, "text"), tmp_path / "text")
    w = array_record_module.ArrayRecordWriter(str(tmp_path / "text" / "zz.array_record"),
                                              "group_size:1")
    for r in (b"\xc1 not msgpack", b"\x93\x01\x02\x03"):  # garbage; a msgpack list
        w.write(r)
    w.close()
    cfg = C.config(str(tmp_path), prefetch=0)
    cfg.data.tokenizer = C.config(d).data.tokenizer
    cfg.data.mixture = {"interleaved": 0.0, "caption": 0.0, "text": 1.0}
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    with pytest.raises(records.RecordError,
                       match=r"zz.array_record record [01]: (not a msgpack|schema version)"):
        for _ in range(100):
            next(it)
