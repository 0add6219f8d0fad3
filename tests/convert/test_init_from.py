"""The architecture travels with the checkpoint: a run from converted checkpoints takes their
architecture where the config leaves it at its defaults; a config that contradicts them is one
error, listing for every component the pasteable flags that fix it; a resumed run and an
evaluation take the run's own checkpoint's architecture; a shape that still differs is one
line naming the parameter."""

import os

import jax
import numpy as np
import pytest
from absl import flags

from mm1_jax.checkpoint import Checkpointer
from mm1_jax.cli_config import parse
from mm1_jax.config import ConfigError, base_config
from mm1_jax.convert.__main__ import main
from mm1_jax.convert.init_from import check_shapes, resolve_architecture, source_model_config
from mm1_jax.data.synthetic import SPECIAL
from mm1_jax.errors import CheckpointError
from mm1_jax.eval.restore import for_checkpoint
from mm1_jax.startup import start
from tests.convert.test_decoder import hf_model
from tests.helpers import create_train_state

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    """ckpt/{vision,decoder} from a tiny CLIP (gelu, 24 px) and a tiny Llama (width 64)."""
    tmp = tmp_path_factory.mktemp("init_from")
    torch.manual_seed(0)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=24, patch_size=4, hidden_act="gelu")).save_pretrained(tmp / "clip")
    hf_model("llama").save_pretrained(tmp / "llama")
    main(["vision", "--src", str(tmp / "clip"), "--out", str(tmp / "ckpt" / "vision")])
    main(["decoder", "--src", str(tmp / "llama"), "--out", str(tmp / "ckpt" / "decoder")])
    return str(tmp / "ckpt")


def _from(converted, cfg=None):
    cfg = cfg or base_config()
    cfg.init_from.vision = os.path.join(converted, "vision")
    cfg.init_from.decoder = os.path.join(converted, "decoder")
    return cfg


def test_defaults_take_the_checkpoints_architecture(converted):
    cfg = _from(converted)
    cfg.model.connector.num_tokens = 4  # the connector is the run's own
    got = resolve_architecture(cfg)
    for component in ("vision", "decoder"):
        for section, fields in source_model_config(os.path.join(converted, component)).items():
            for field, value in fields.items():
                assert got.model[section][field] == value, (section, field)
    assert (got.model.vision.act, got.model.decoder.width) == ("gelu", 64)
    assert got.model.connector.num_tokens == 4 and cfg.model.decoder.width == 2048  # a copy


def test_contradictions_are_one_error_with_pasteable_flags_for_every_component(converted):
    argv = ["prog", f"--config={ROOT}/experiments/demo_cpu.py",  # sets small dims of its own
            f"--config.init_from.vision={converted}/vision",
            f"--config.init_from.decoder={converted}/decoder"]
    fv = flags.FlagValues()
    parse(argv, fv)
    with pytest.raises(ConfigError) as e:
        resolve_architecture(fv.config)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("the config contradicts the checkpoints of "
                                              "config.init_from: model.vision.image_size is 32, ")
    wanted = ["--config.model.vision.image_size=24", "--config.model.vision.width=32",
              "--config.model.vision.depth=3",
              "--config.model.decoder.vocab_size=97", "--config.model.decoder.width=64",
              "--config.model.decoder.tie_embeddings=False", "--config.model.decoder.mlp_dim=112"]
    for flag in wanted:
        assert flag in msg, flag
    assert "model.vision.act" not in msg  # demo_cpu leaves it at its default: adopted
    pasted = msg.split("pass ")[1].split(" (or leave")[0].split()
    fv = flags.FlagValues()
    parse(argv + pasted, fv)  # the flags parse as they are, and then nothing contradicts
    got = resolve_architecture(fv.config)
    assert (got.model.vision.depth, got.model.decoder.tie_embeddings) == (3, False)
    assert got.model.vision.act == "gelu"


@pytest.fixture(scope="module")
def run_dir(converted, tmp_path_factory) -> tuple[str, object]:
    """A run's workdir with a checkpoint (step 3) saved from converted-architecture params."""
    cfg = resolve_architecture(_from(converted))
    cfg.init_from.vision = cfg.init_from.decoder = None
    cfg.model.dtype, cfg.model.connector.num_tokens, cfg.data.max_images = "float32", 4, 1
    cfg.model.connector.hidden, cfg.model.connector.depth = 16, 1
    cfg.train.batch_size, cfg.train.seq_len, cfg.checkpoint.async_save = 1, 32, False
    workdir = str(tmp_path_factory.mktemp("run"))
    state, _ = create_train_state(start(cfg, devices=jax.devices()[:1], special=SPECIAL, corpus=False))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
    ckpt.save(3, state, None, force=True)
    ckpt.close()
    return workdir, state


def test_resume_and_eval_take_the_runs_architecture(run_dir):
    workdir, state = run_dir
    got = resolve_architecture(base_config(), workdir)  # a bare config resumes as the run was
    assert (got.model.decoder.width, got.model.connector.num_tokens) == (64, 4)
    cfg = base_config()
    cfg.model.decoder.width = 128  # set explicitly: a contradiction, named with its fix
    with pytest.raises(ConfigError, match=r"^the config contradicts the run's checkpoint "
                       r".*checkpoints/3: model.decoder.width is 128, .*3 \(the run's saved "
                       r"config\) has 64\. .*pass --config.model.decoder.width=64 "):
        resolve_architecture(cfg, workdir)
    # evaluation: the same, from the step evaluated, and init_from is not read
    step_dir = os.path.join(workdir, "checkpoints", "3")
    cfg = base_config()
    cfg.init_from.decoder = "/moved/away"
    got = for_checkpoint(cfg, step_dir)
    assert (got.model.decoder.width, got.init_from.decoder) == (64, None)
    cfg.model.vision.depth = 5
    with pytest.raises(ConfigError, match=r"model.vision.depth is 5, .* has 3\. .*"
                       r"pass --config.model.vision.depth=3 "):
        for_checkpoint(cfg, step_dir)


def test_a_shape_that_differs_is_one_line_naming_the_parameter(run_dir):
    workdir, state = run_dir
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params)
    abstract["decoder"]["embed"] = jax.ShapeDtypeStruct((128, 64), np.float32)
    state_dir = os.path.join(workdir, "checkpoints", "3", "state")
    with pytest.raises(CheckpointError, match=rf"^{state_dir}: params/decoder/embed is \[97, 64\] "
                       r"there and \[128, 64\] in this config; the config's model.decoder, "
                       r"model.moe differ from the checkpoint's"):
        check_shapes(abstract, state_dir)
