"""Items: where a too-long item is cut, when it is dropped, and that drops are counted."""

import weakref

import grain
import numpy as np

from mm1_jax.data import examples, packing, records
from mm1_jax.data.tokenizer import Tokenizer
from tests.data import factories as F

T = 8  # tokens per image: a block is T + 2 = 10 tokens


def test_cut_never_splits_an_image_and_respects_the_budget():
    # (n_tokens, block starts, seq_len, max_images) -> (tokens kept, images kept), by hand
    assert examples.cut(45, [1, 15, 30], 10, 50, 2) == (30, 2)  # third image over budget
    assert examples.cut(60, [], 10, 50, 2) == (50, 0)  # text only: cut at seq_len
    assert examples.cut(60, [45], 10, 50, 2) == (45, 0)  # block 45..54 would cross 50
    assert examples.cut(60, [40], 10, 50, 2) == (50, 1)  # block 40..49 ends exactly at 50
    assert examples.cut(22, [1, 11], 10, 50, 2) == (22, 2)  # <s>, 2 blocks, </s>: fits whole


def _spec(seq_len=64, max_images=2):
    return examples.ItemSpec(seq_len=seq_len, max_images=max_images, tokens_per_image=T,
                             image_size=16)


def _rec(*segments, kind="interleaved"):
    segs = [records.text_segment(s) if isinstance(s, str)
            else records.image_segment(F.png(20, 20, seed=s), "png", 20, 20) for s in segments]
    return records.Record(kind, "r", "test", segs)


def _collate(tok, max_images=2):
    return packing.Collate(max_images, 16, special=tok.special)


def test_item_layout_targets_and_loss_mask(corpus):
    tok = Tokenizer(f"{corpus[0]}/tokenizer.model")
    items = [examples.make_item(_rec(0, "if x:", kind="caption"), tok, _spec()),
             examples.make_item(_rec("while y"), tok, _spec())]
    text = tok.encode("if x:")
    want = [tok.bos_id, tok.image_start_id] + [tok.image_id] * T + [tok.image_end_id] + text + [tok.eos_id]
    assert items[0]["tokens"].tolist() == want
    assert items[0]["image_slots"].tolist() == [1] and [p.shape for p in items[0]["images"]] == [(16, 16, 3)]
    assert (items[0]["kind"], items[0]["truncated"], items[0]["dropped"]) == (2, 0, 0)

    # both items in one row of 64: targets stay inside each item, then padding
    ds = grain.MapDataset.source(items).to_iter_dataset()
    (b,) = list(packing.pack(ds, seq_len=64, max_images=2, num_bins=1, pad_id=tok.pad_id,
                             seed=0).batch(1, batch_fn=_collate(tok)))
    second = [tok.bos_id] + tok.encode("while y") + [tok.eos_id]
    n1, n2 = len(want), len(second)
    row = lambda k: getattr(b, k)[0].tolist()  # noqa: E731
    assert row("tokens") == want + second + [tok.pad_id] * (64 - n1 - n2)
    assert row("targets") == want[1:] + [tok.pad_id] + second[1:] + [tok.pad_id] * (65 - n1 - n2)
    # no loss predicting <img> (from <s>), inside the block, past </s> or on padding
    mask = [0] * (T + 2) + [1] * (len(text) + 1) + [0] + [1] * (n2 - 1) + [0] * (65 - n1 - n2)
    assert row("loss_mask") == mask
    assert row("kinds") == [2] * n1 + [1] * n2 + [0] * (64 - n1 - n2)
    assert row("segment_ids") == [1] * n1 + [2] * n2 + [0] * (64 - n1 - n2)
    assert row("positions")[:n1 + n2] == list(range(n1)) + list(range(n2))
    assert row("image_mask") == [True, False]


def test_dropped_and_truncated_items_are_counted(corpus):
    tok = Tokenizer(f"{corpus[0]}/tokenizer.model")
    recs = [
        _rec("a short document"),  # kept whole
        _rec(1, 2, 3, "text after three images"),  # budget 2: only <s> + 2 images left -> drop
        _rec("an " * 80),  # longer than 64 tokens: cut in its text
        _rec(4, 5, 6),  # images only: nothing to learn -> drop
        _rec("x", 7, "y"),
        _rec("intro", 1, "a", 2, "b", 3, "c"),  # third image over budget: cut before it
        _rec(2, 3, 4, 5, 6, "late text"),  # drop
    ]
    items = [examples.make_item(r, tok, _spec()) for r in recs]
    assert [i["dropped"] for i in items] == [0, 1, 0, 1, 0, 0, 1]
    assert [i["truncated"] for i in items] == [0, 1, 1, 1, 0, 1, 1]
    assert len(items[2]["tokens"]) == 64 and items[5]["image_slots"].sum() == 2

    ds = grain.MapDataset.source(recs).map(
        lambda r: examples.make_item(r, tok, _spec())).to_iter_dataset()
    rows = packing.pack(ds, seq_len=64, max_images=2, num_bins=2, pad_id=tok.pad_id, seed=0)
    out = list(rows.batch(1, batch_fn=_collate(tok)))
    assert sum(int(r.dropped.sum()) for r in out) == 3
    assert sum(int(r.truncated.sum()) for r in out) == 2  # the two kept cut items
    assert sum(len(set(r.segment_ids[0][r.segment_ids[0] > 0])) for r in out) == 4
    assert all(r.image_mask.sum() <= 2 for r in out)


def test_collate_recycles_only_batches_nobody_holds(corpus):
    tok = Tokenizer(f"{corpus[0]}/tokenizer.model")
    items = [examples.make_item(_rec("a", 1, "b", 2), tok, _spec()),
             examples.make_item(_rec("c", 3), tok, _spec()),
             examples.make_item(_rec("d"), tok, _spec())]
    ds = grain.MapDataset.source(items).to_iter_dataset()
    rows = list(packing.pack(ds, seq_len=64, max_images=2, num_bins=3, pad_id=tok.pad_id, seed=0))
    collate = _collate(tok)
    ref = [collate([r]).images.copy() for r in rows]  # what each row must look like
    # row 0: "a" and "d" with images 1, 2 (budget full); row 1: "c" with image 3
    assert [int((x != 0).any(axis=(2, 3, 4)).sum()) for x in ref] == [2, 1]

    held = [collate([r]) for r in rows]  # a consumer that keeps every batch ...
    assert held[0].images is not held[1].images
    for b, want in zip(held, ref):  # ... sees each exactly as it was made
        np.testing.assert_array_equal(b.images, want)
    view = held[0].images[0]  # a view keeps its base alive and unrecycled
    first = weakref.ref(held[0].images)
    del held
    again = collate([rows[1]])
    assert again.images is not first()
    np.testing.assert_array_equal(again.images, ref[1])
    del view
    del again
    for r, want in zip(rows * 2, ref * 2):  # released arrays are reused, stale slots cleared
        out = collate([r]).images
        assert out is first()
        np.testing.assert_array_equal(out, want)
        del out
