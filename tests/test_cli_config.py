"""The commands' `--config` (mm1_jax/cli_config.py): evaluators removed, added and replaced from
the command line, typed as in the experiment; a run's saved config read back with the types of
the config it came from."""

import json
import os

import pytest
from absl import flags

from mm1_jax.cli_config import parse, typed
from mm1_jax.config import ConfigError, evaluator, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = f"--config={ROOT}/experiments/demo_cpu.py"


def config(*args):
    fv = flags.FlagValues()
    rest = parse(["prog", *args], fv)
    return fv.config, rest


def test_an_inherited_evaluator_is_removed_and_others_added_typed():
    cfg, rest = config(DEMO, "--config.evals.demo=None", "--config.evals.coco.type=captioning",
                       "--config.evals.coco.annotations=a.json", "--config.evals.coco.images=img/",
                       "--config.evals.coco.shots=0,4", "--config.evals.coco.limit=50", "extra")
    assert rest == ["prog", "extra"]
    assert sorted(cfg.evals) == ["coco"]
    e = cfg.evals.coco
    assert (e.type, e.annotations, e.images, e.shots, e.limit) == ("captioning", "a.json", "img/", (0, 4), 50)
    assert e.max_new_tokens == evaluator("captioning").max_new_tokens  # the rest at defaults
    assert cfg.train.steps == load_config(DEMO.split("=", 1)[1]).train.steps


def test_an_evaluator_is_replaced_and_all_are_removed():
    cfg, _ = config(DEMO, "--config.evals.demo=None", "--config.evals.demo.type=perplexity",
                    "--config.evals.demo.files=held.jsonl", "--config.evals.demo.files=more.txt")
    assert (cfg.evals.demo.type, cfg.evals.demo.files) == ("perplexity", ("held.jsonl", "more.txt"))
    assert cfg.evals.demo.dir is None  # a fresh entry: nothing left of the demo one
    cfg, _ = config(DEMO, "--config.evals=None")
    assert not cfg.evals


def test_mistakes_name_the_flag():
    with pytest.raises(ConfigError, match=r"config.evals.x: a new evaluator needs "
                       r"--config.evals.x.type=<one of \('captioning'"):
        config(DEMO, "--config.evals.x.limit=3")
    with pytest.raises(ConfigError, match=r"--config.evals.nope=None: config.evals has no entry "
                       r"'nope' \(entries: \['demo'\]\)"):
        config(DEMO, "--config.evals.nope=None")
    with pytest.raises(ConfigError, match=r"--config is required: .*w holds no checkpoint"):
        config("--workdir=/nonexistent/w")
    with pytest.raises(ConfigError, match=r"--config: 'experiments/none.py' does not exist"):
        config("--config=experiments/none.py")


def test_a_saved_config_reads_back_with_its_types():
    """What the trainer saves (JSON) comes back equal to the config, typed: tuples are tuples,
    the mixture has the run's kinds only, evaluators have every field, so overrides parse."""
    cfg = load_config(f"{ROOT}/experiments/demo_cpu.py")
    cfg.data.mixture = {"caption": 1.0}
    cfg.evals.coco = evaluator("captioning", annotations="a.json", images="i/", shots=(0, 8))
    cfg.optim.lr_mult = ((r"^vision/", 0.1),)
    back = typed(json.loads(cfg.to_json_best_effort()))
    assert back.to_dict() == cfg.to_dict()
    assert back.evals.coco.shots == (0, 8) and back.model.vision.mean == cfg.model.vision.mean
    back.evals.coco.limit = 5  # a typed placeholder field
    with pytest.raises(TypeError):
        back.evals.coco.limit = "five"
