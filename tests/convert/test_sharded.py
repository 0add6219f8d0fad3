"""A checkpoint converted for an 8-device mesh streams tensor by tensor and restores onto that
mesh through `init_from` (8 simulated CPU devices, in a subprocess)."""

import json

import pytest

from tests.train.conftest import run_python

pytest.importorskip("transformers")


def test_converted_for_8_devices_restores_onto_them(tmp_path):
    p = run_python(["tests/convert/sharded_convert.py", str(tmp_path)], devices=8)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    # Streaming: a shard being assembled plus the one source tensor read into it, never more.
    assert r["peak_tensors"] <= 2
    assert r["peak_bytes"] <= 2 * r["largest_tensor_bytes"] < r["model_bytes"] / 4
    # Restored in the training state's own sharding: embed [128, 64] is (tensor=2) x (fsdp=4).
    assert r["same_sharding"] and r["embed_shard"] == [64, 16]
    assert r["embed_equal"] and r["wq_equal"] and r["vision_untouched"]
