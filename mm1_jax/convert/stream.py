"""Tensor-by-tensor conversion: safetensors in, sharded arrays (and an Orbax checkpoint) out.

A converter describes every destination parameter as a `Leaf`: its shape, the source tensors it
is built from (one per index of its leading stacked axes: layers, then experts), and a function
from one source tensor to the trailing axes (a transpose, a split of a fused projection, a
resize). Nothing is read until a device asks for its shard: `to_sharded` builds each parameter
with `jax.make_array_from_callback`, and a shard reads, one at a time, only the memory-mapped
source tensors that land in it. A 30B decoder is therefore never whole in one host's memory;
`Reader.peak_*` record what the streaming path held at once (tests/convert asserts on them).

safetensors files are read and written with the `safetensors` package (numpy framework: no torch
needed; bfloat16 checkpoints read through ml_dtypes). A damaged file (truncated download, wrong
format) is a CheckpointError naming it. `to_sharded` shows a progress bar (parameters per
second, bytes read) on stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
import safetensors
import safetensors.numpy
from tqdm import tqdm

from mm1_jax.errors import CheckpointError

Path = tuple

@dataclasses.dataclass(frozen=True)
class Leaf:
    """One destination parameter of `shape`.

    sources: a source tensor name, a nested list of names (one nesting level per leading axis
    of `shape` they stack on), or None for a parameter made from nothing (a fresh router).
    fn: one source tensor (None if `sources` is None) -> the remaining axes, as float32-castable.
    """

    shape: tuple[int, ...]
    sources: Any
    fn: Callable[[Any], np.ndarray] = lambda x: x


class Reader:
    """Source tensors by name, with a record of what the streaming path holds at once."""

    def __init__(self):
        self._held, self._held_bytes = 0, 0
        self.peak_tensors, self.peak_bytes = 0, 0
        self.tensors_read, self.bytes_read = 0, 0  # every read counted (a shard reads its part)
        self.params_written, self.values_written = 0, 0  # destination parameters, their values

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def _get(self, name: str) -> np.ndarray:
        raise NotImplementedError

    @contextlib.contextmanager
    def hold(self, nbytes: int):
        """Counts a host buffer of `nbytes` (a source tensor, a shard being assembled)."""
        self._held += 1
        self._held_bytes += nbytes
        self.peak_tensors = max(self.peak_tensors, self._held)
        self.peak_bytes = max(self.peak_bytes, self._held_bytes)
        try:
            yield
        finally:
            self._held -= 1
            self._held_bytes -= nbytes

    @contextlib.contextmanager
    def tensor(self, name: str) -> Iterator[np.ndarray]:
        """A source tensor (memory-mapped where possible), counted at its full size while held."""
        if name not in self:
            raise KeyError(f"the checkpoint has no tensor {name!r}")
        t = self._get(name)
        self.tensors_read += 1
        self.bytes_read += t.nbytes
        with self.hold(t.nbytes):
            yield t

    def __contains__(self, name: str) -> bool:
        return name in set(self.keys())


class DictReader(Reader):
    """A state dict already in memory (numpy or torch tensors): the library functions' path."""

    def __init__(self, state_dict: Mapping[str, Any]):
        super().__init__()
        self.sd = dict(state_dict)

    def keys(self):
        return list(self.sd)

    def __contains__(self, name):
        return name in self.sd

    def shape(self, name):
        return tuple(self.sd[name].shape)

    def _get(self, name):
        v = self.sd[name]
        if hasattr(v, "detach"):  # torch.Tensor; bf16 has no numpy dtype, so go via float32
            v = v.detach().float().cpu().numpy()
        return np.asarray(v)


class SafetensorsReader(Reader):
    """`path`: one .safetensors file, or a directory with `model.safetensors.index.json` (its
    shards), else every `*.safetensors` in it. `metadata`: the files' `__metadata__`. Read with
    the `safetensors` package (memory-mapped; bfloat16 through ml_dtypes), one tensor at a time."""

    def __init__(self, path: str):
        super().__init__()
        if os.path.isfile(path):
            directory, files = os.path.dirname(path), [os.path.basename(path)]
        else:
            directory = path
            index = os.path.join(directory, "model.safetensors.index.json")
            if os.path.exists(index):
                with open(index) as f:
                    files = sorted(set(json.load(f)["weight_map"].values()))
            else:
                files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
        if not files:
            raise CheckpointError(f"no *.safetensors (or model.safetensors.index.json) in {directory}")
        self._where: dict[str, Any] = {}  # tensor name -> the open file holding it
        self._file: dict[Any, str] = {}  # open file -> its path, for errors
        self.metadata: dict[str, str] = {}
        for file in files:
            path = os.path.join(directory, file)
            try:
                handle = safetensors.safe_open(path, framework="numpy")
            except (safetensors.SafetensorError, OSError) as e:
                raise _damaged(path, e) from None
            self._file[handle] = path
            self.metadata.update(handle.metadata() or {})
            self._where.update(dict.fromkeys(handle.keys(), handle))

    def keys(self):
        return list(self._where)

    def __contains__(self, name):
        return name in self._where

    def shape(self, name):
        return tuple(self._where[name].get_slice(name).get_shape())

    def _get(self, name):
        try:
            return self._where[name].get_tensor(name)
        except (safetensors.SafetensorError, OSError) as e:
            raise _damaged(self._file[self._where[name]], e) from None


def _damaged(path: str, e: Exception) -> CheckpointError:
    missing = isinstance(e, FileNotFoundError)
    return CheckpointError(f"{path}: {'missing' if missing else 'a damaged safetensors file'} "
                           f"({e}); download or save it again")


def save_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Writes `tensors` (name -> array) as one safetensors file."""
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
                                metadata=dict(metadata) if metadata else None)


def _depth(sources) -> int:
    return 1 + _depth(sources[0]) if isinstance(sources, (list, tuple)) else 0


def read_block(reader: Reader, leaf: Leaf, index: tuple[slice, ...] | None = None) -> np.ndarray:
    """float32 block `leaf[index]`, reading only the source tensors that land in it."""
    index = tuple(index or ()) + (slice(None),) * (len(leaf.shape) - len(index or ()))
    if leaf.sources is None:
        whole = np.asarray(leaf.fn(None), np.float32)
        return np.ascontiguousarray(whole[index])
    lead = _depth(leaf.sources)
    ranges = [range(*s.indices(n)) for s, n in zip(index, leaf.shape)]
    out_shape = tuple(len(r) for r in ranges)
    with reader.hold(int(np.prod(out_shape)) * 4):
        out = np.empty(out_shape, np.float32)
        for pos, ids in zip(itertools.product(*map(range, out_shape[:lead])),
                            itertools.product(*ranges[:lead])):
            name = leaf.sources
            for i in ids:
                name = name[i]
            with reader.tensor(name) as t:
                part = np.asarray(leaf.fn(t))
                if part.shape != leaf.shape[lead:]:
                    raise CheckpointError(f"{name}: converted to {part.shape}, but the model expects "
                                          f"{leaf.shape[lead:]}; does the config match the checkpoint?")
                out[pos] = part[index[lead:]]
        return out


def materialize(leaves: Mapping[Path, Leaf], reader: Reader) -> dict[Path, np.ndarray]:
    """Every leaf as one float32 numpy array (small models, tests)."""
    return {path: read_block(reader, leaf) for path, leaf in leaves.items()}


def to_sharded(leaves: Mapping[Path, Leaf], reader: Reader,
               shardings: Mapping[Path, jax.sharding.Sharding], dtype=np.float32
               ) -> dict[Path, jax.Array]:
    """Every leaf as a jax.Array in its sharding, each device's shard read on its own, with a
    progress bar over the parameters."""
    out = {}
    with tqdm(total=len(leaves), unit="param", desc="converting", dynamic_ncols=True) as bar:
        for path, leaf in leaves.items():
            out[path] = jax.make_array_from_callback(
                leaf.shape, shardings[path],
                lambda idx, leaf=leaf: read_block(reader, leaf, idx).astype(dtype, copy=False))
            reader.params_written += 1
            reader.values_written += math.prod(leaf.shape)
            bar.set_postfix_str(f"{reader.bytes_read / 1e6:.1f} MB read", refresh=False)
            bar.update()
    return out
