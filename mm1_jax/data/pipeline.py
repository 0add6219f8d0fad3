"""The Grain pipeline: ArrayRecord shards of three kinds -> mixed, packed, fixed-shape batches.

Per kind (a `MapDataset`, random access by index):
    ArrayRecord source -> parse -> shuffle (a new order each epoch) -> repeat -> shard by process
    -> decode + resize images, tokenize, cut to fit (mm1_jax.data.examples)
Then, with `data.mix_level = "sequence"` (default): per kind, read in `data.read_threads`
threads -> first-fit pack (mm1_jax.data.packing); mix the packed rows by `data.mixture` weights
(Grain's deterministic proportional interleave), so the weights are shares of training sequences
as in MM1. With "item": mix the items by weight, read, then pack. Then: batch -> prefetch in a
thread (`data.worker_count == 0`) or in worker processes.

Everything up to the packer is a pure function of the element index, and the iterators after it
keep their state in `get_state()`, so a restored iterator yields exactly the batches that would
have come (the trainer checkpoints it with grain's Orbax handler: docs/data.md).
"""

from __future__ import annotations

import os

import grain
import numpy as np

from mm1_jax.config import ConfigError, check_batch_split
from mm1_jax.data import examples, packing, records
from mm1_jax.data.kinds import KINDS
from mm1_jax.data.tokenizer import Tokenizer


class _Parse:
    """Source bytes -> Record; errors name the shard file and the record's index in it."""

    def __init__(self, paths: list[str], counts: list[int]):
        self._paths = paths
        self._ends = np.cumsum(counts)

    def __call__(self, index: int, data: bytes) -> records.Record:
        try:
            return records.decode(data)
        except records.RecordError:  # parse again, naming the place (only on this rare path)
            return records.decode(data, where=self._where(index))

    def _where(self, index: int) -> str:
        index %= int(self._ends[-1])  # past the first epoch the index keeps counting
        f = int(np.searchsorted(self._ends, index, side="right"))
        local = index - (int(self._ends[f - 1]) if f else 0)
        return f"{self._paths[f]} record {local}"


class _ToItem:
    """Record -> packed-ready item. Loads the tokenizer lazily so worker processes can pickle it."""

    def __init__(self, tokenizer_path: str, spec: examples.ItemSpec):
        self._path = tokenizer_path
        self._spec = spec
        self._tok = None

    def __getstate__(self):
        return {"_path": self._path, "_spec": self._spec, "_tok": None}

    def __call__(self, record: records.Record) -> dict:
        if self._tok is None:
            self._tok = Tokenizer(self._path)
        return examples.make_item(record, self._tok, self._spec)


def item_spec(cfg) -> examples.ItemSpec:
    """The per-item settings, from the model and data sections of the config."""
    return examples.ItemSpec(
        seq_len=cfg.train.seq_len, max_images=cfg.data.max_images,
        tokens_per_image=cfg.model.connector.num_tokens, image_size=cfg.model.vision.image_size,
        interpolation=cfg.data.interpolation, resize_mode=cfg.data.resize_mode)


def check_corpus(cfg) -> None:
    """The corpus exists: `data.dir` and `data.tokenizer` are set, and every kind the mixture
    draws from has shards holding records. Start-up (mm1_jax.startup.start) runs it before
    anything compiles; `make_dataset` runs it for callers that skip start-up."""
    d = cfg.data
    if not d.dir or not d.tokenizer:
        raise ConfigError("config.data.dir and config.data.tokenizer must be set (the corpus "
                          "directory and its sentencepiece .model)")
    for kind in KINDS:
        if d.mixture.get(kind, 0.0) <= 0:
            continue
        paths = records.shard_paths(d.dir, kind)
        if not paths:
            hint = (f" (the demo corpus: `python -m mm1_jax.data.demo --output={d.dir}`)"
                    if os.path.basename(os.path.normpath(d.dir)) == "demo_data" else "")
            raise ConfigError(
                f"config.data.dir: no shards {os.path.join(d.dir, kind, '*.array_record')} for "
                f"kind {kind!r}; convert data with `python -m mm1_jax.data.convert`{hint}, or set "
                f"config.data.mixture.{kind}=0")
        if not sum(records.num_records(p) for p in paths):
            raise ConfigError(f"config.data.dir: the {kind!r} shards under {d.dir} hold no "
                              f"records; set config.data.mixture.{kind}=0 or convert data")


def _items(cfg, kind: int, paths: list[str], spec: examples.ItemSpec, *, shard_index: int,
           shard_count: int) -> grain.MapDataset:
    """Items of one kind, endlessly, in a new order per epoch; a pure function of the index."""
    d = cfg.data
    source = grain.sources.ArrayRecordDataSource(paths)
    counts = [records.num_records(p) for p in paths]
    ds = grain.MapDataset.source(source).map_with_index(_Parse(paths, counts))
    # shuffle before repeat: the index's epoch reseeds the permutation, a new order per epoch
    ds = ds.shuffle(seed=(d.shuffle_seed + 1000 * kind) % 2**32).repeat()
    ds = ds[shard_index::shard_count]
    return ds.map(_ToItem(d.tokenizer, spec))


def make_dataset(cfg, *, shard_index: int, shard_count: int) -> grain.IterDataset:
    """The batched pipeline of one process (shard) as a Grain IterDataset; see make_iterator."""
    check_corpus(cfg)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is outside 0..{shard_count - 1}")
    check_batch_split(cfg.train, processes=shard_count)
    d = cfg.data
    spec = item_spec(cfg)
    tok = Tokenizer(d.tokenizer)
    parts, weights = {}, {}
    for k, kind in enumerate(KINDS):
        weight = d.mixture.get(kind, 0.0)
        if weight <= 0:
            continue
        paths = records.shard_paths(d.dir, kind)
        parts[kind] = _items(cfg, k, paths, spec, shard_index=shard_index, shard_count=shard_count)
        weights[kind] = weight

    b = cfg.train.batch_size // shard_count
    read = grain.ReadOptions(num_threads=d.read_threads, prefetch_buffer_size=d.read_buffer)

    def pack(items: grain.IterDataset, seed: int) -> grain.IterDataset:
        return packing.pack(items, seq_len=spec.seq_len, max_images=spec.max_images,
                            num_bins=max(d.packing_bins, b), pad_id=tok.pad_id, seed=seed)

    if d.mix_level == "item":  # mix items, then pack: weights are shares of items
        items = grain.MapDataset.mix(list(parts.values()), list(weights.values()))
        rows = pack(items.to_iter_dataset(read), d.shuffle_seed)
    else:  # pack each kind, then mix rows: weights are shares of sequences (MM1, AXLearn)
        # Keyed by kind, so the saved state names each kind's packer. Each kind packs with its
        # own seed, so its rows are those of the kind alone (tests/data/test_mixture.py).
        rows = grain.IterDataset.mix(
            {kind: pack(p.to_iter_dataset(read), d.shuffle_seed + KINDS.index(kind))
             for kind, p in parts.items()}, weights)
    batches = rows.batch(b, drop_remainder=True, batch_fn=packing.Collate(
        spec.max_images, spec.image_size, special=tok.special, pool=d.prefetch + 3))
    if d.worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            # Grain's workers read absl flags (grain_*); outside absl.app.run (scripts, tests,
            # notebooks) nobody parsed them, and their defaults are what we want.
            flags.FLAGS.mark_as_parsed()
        return batches.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=d.worker_count, per_worker_buffer_size=max(d.prefetch, 1)))
    if d.prefetch > 0:
        return grain.experimental.ThreadPrefetchIterDataset(batches,
                                                            prefetch_buffer_size=d.prefetch)
    return batches


def make_iterator(cfg, *, shard_index: int | None = None,
                  shard_count: int | None = None) -> grain.DatasetIterator:
    """Batches for this process: a Grain DatasetIterator with get_state() / set_state().

    Each element is a `mm1_jax.data.batch.Batch` of numpy arrays with
    b = train.batch_size // shard_count rows (`batch_spec(cfg, b)` gives the shapes).
    shard_index / shard_count default to jax.process_index() / jax.process_count().
    """
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    return iter(make_dataset(cfg, shard_index=shard_index, shard_count=shard_count))
