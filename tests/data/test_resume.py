"""Exact resume through Orbax in a new process, and disjoint data across JAX processes."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mm1_jax.data import pipeline
from tests.data import corpus as C
from tests.helpers import as_dict, save_state

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESTORE = """
import json, sys
import numpy as np
from tests.data import corpus as C
from mm1_jax.data import pipeline
from tests.helpers import as_dict, restore_state
d, data, state_dir, n, out = sys.argv[1:]
it = pipeline.make_iterator(C.config(d, **json.loads(data)), shard_index=0, shard_count=1)
restore_state(it, state_dir)
np.savez(out, **{f"{i}/{k}": v for i in range(int(n)) for k, v in as_dict(next(it)).items()})
it.close()
"""


def _run(script: str, *args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("data", [{"prefetch": 2}, {"prefetch": 0, "worker_count": 1}],
                         ids=["thread_prefetch", "worker_process"])
def test_restore_in_new_process_gives_the_same_batches(corpus, tmp_path, data):
    d, _ = corpus
    it = pipeline.make_iterator(C.config(d, **data), shard_index=0, shard_count=1)
    for _ in range(5):
        next(it)
    save_state(it, str(tmp_path / "state"))
    want = [as_dict(next(it)) for _ in range(4)]
    it.close()

    proc = _run(RESTORE, d, json.dumps(data), str(tmp_path / "state"), "4",
                str(tmp_path / "got.npz"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    got = np.load(tmp_path / "got.npz")
    assert len(got.files) == 4 * len(want[0])
    for i, batch in enumerate(want):
        for k, v in batch.items():
            g = got[f"{i}/{k}"]
            assert g.dtype == v.dtype and g.shape == v.shape
            assert g.tobytes() == np.asarray(v).tobytes(), (i, k)


WORKER = """
import json, sys
import jax
port, pid, d, out = sys.argv[1:]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(pid))
from mm1_jax.data import pipeline, records
from mm1_jax.data.kinds import KINDS
from mm1_jax.data.tokenizer import Tokenizer
from tests.data import corpus as C
recs = {r.id: r for k in KINDS for r in records.read_records(records.shard_paths(d, k))}
cfg = C.config(d, prefetch=0)
tok = Tokenizer(cfg.data.tokenizer)
it = pipeline.make_iterator(cfg)  # shard = this JAX process
ids = []
for _ in range(20):
    b = next(it)
    assert b.tokens.shape[0] == cfg.train.batch_size // 2
    for row in range(b.tokens.shape[0]):
        for _, sl in C.segments(b, row):
            ids.append(C.record_of(b.tokens[row][sl], tok, recs).id)
json.dump({"process": jax.process_index(), "ids": ids}, open(out, "w"))
jax.distributed.shutdown()
"""


def test_two_jax_processes_read_disjoint_data(corpus, tmp_path):
    d, _ = corpus
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [_run(WORKER, str(port), str(i), d, str(tmp_path / f"{i}.json"), env=env)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    out = [json.load(open(tmp_path / f"{i}.json")) for i in range(2)]
    assert [o["process"] for o in out] == [0, 1]
    a, b = (set(o["ids"]) for o in out)
    assert len(a) > 40 and len(b) > 40
    assert not a & b
    # the three kinds' epochs are far from exhausted: within an epoch no id repeats either
    assert len(out[0]["ids"]) == len(a) and len(out[1]["ids"]) == len(b)
