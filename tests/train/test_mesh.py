"""Mesh inference and the config errors that must come before any compilation."""

import pytest
from jax.sharding import PartitionSpec as P

from mm1_jax.config import ConfigError
from mm1_jax.train import loop
from mm1_jax.config import validate
from mm1_jax.sharding import resolve_mesh_shape, spec_for
from mm1_jax.data.synthetic import SPECIAL


def test_mesh_shape_inference():
    assert resolve_mesh_shape((-1, 1, 1, 1), 8) == (8, 1, 1, 1)
    assert resolve_mesh_shape((2, -1, 2, 1), 8) == (2, 2, 2, 1)
    assert resolve_mesh_shape((1, 4, 2, 1), 8) == (1, 4, 2, 1)


@pytest.mark.parametrize("shape, n, match", [
    ((3, -1, 1, 1), 8, "do not divide|does not divide"),
    ((2, 2, 1, 1), 8, "needs 4 devices but 8"),
])
def test_impossible_meshes_name_the_key(shape, n, match):
    with pytest.raises(ConfigError, match="config.mesh.shape") as e:
        resolve_mesh_shape(shape, n)
    assert e.match(match)


@pytest.mark.parametrize("shape, match", [
    ((-1, -1, 1, 1), "at most one -1"),
    ((8, 1, 1), "one size per axis"),
    ((3, 1, 1, 1), "batch_size: 8 is not divisible by data parallelism"),
])
def test_static_mesh_errors_come_from_validate(demo_cfg, shape, match):
    demo_cfg.mesh.shape = shape
    with pytest.raises(ConfigError, match=match):
        validate(demo_cfg)


def test_spec_drops_mesh_axes_that_do_not_divide():
    class FakeMesh:
        axis_names = ("data", "fsdp", "tensor", "expert")
        shape = {"data": 1, "fsdp": 4, "tensor": 4, "expert": 1}

    # kv_heads=2 cannot be split 4 ways: replicated along that dimension, embed still sharded.
    assert spec_for((128, 2, 32), ("embed", "kv_heads", "head_dim"), FakeMesh()) == P("fsdp", None, None)
    assert spec_for((128, 8, 32), ("embed", "heads", "head_dim"), FakeMesh()) == P("fsdp", "tensor", None)
    assert spec_for((6,), (None,), FakeMesh()) == P(None)


def test_config_errors_come_before_any_compilation(demo_cfg, monkeypatch, tmp_path):
    def forbidden(*a, **k):
        raise AssertionError("reached model construction / compilation")

    monkeypatch.setattr(loop, "abstract_train_state", forbidden)
    monkeypatch.setattr(loop, "compile_step", forbidden)
    demo_cfg.mesh.shape = (2, 1, 1, 1)  # 2 devices wanted, 1 present
    with pytest.raises(ConfigError, match=r"config.mesh.shape.*needs 2 devices but 1"):
        loop.train(demo_cfg, str(tmp_path), iterator=iter([]), special=SPECIAL)
    demo_cfg.mesh.shape = (-1, 1, 1, 1)
    demo_cfg.train.grad_accum = 3  # does not divide batch 8
    with pytest.raises(ConfigError, match="config.train.grad_accum"):
        loop.train(demo_cfg, str(tmp_path), iterator=iter([]), special=SPECIAL)
