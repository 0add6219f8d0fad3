"""The two-stage transfer recipe at demo scale from converted tiny checkpoints: stage 1 trains
the connector only (encoder and decoder bitwise unchanged), stage 2 starts every component from
stage 1's end and trains them all; the whole model then exports to the MM1 safetensors layout."""

import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from mm1_jax.config import ConfigError, load_config
from mm1_jax.convert.__main__ import main
from mm1_jax.convert.export import flat, load_mm1
from mm1_jax.train.loop import train
from mm1_jax.data.synthetic import SPECIAL, SyntheticBatches
from tests.convert.helpers import restored

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _converted(tmp_path) -> str:
    torch.manual_seed(0)
    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=4))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True))
    clip.save_pretrained(tmp_path / "clip")
    llama.save_pretrained(tmp_path / "llama")
    ckpt = tmp_path / "converted"
    main(["vision", "--src", str(tmp_path / "clip"), "--out", str(ckpt / "vision")])
    # 30 token rows more than the checkpoint (demo tokenizer + special pieces), padded to 1152.
    main(["decoder", "--src", str(tmp_path / "llama"), "--out", str(ckpt / "decoder"),
          "--vocab_size", "1030", "--pad_vocab_multiple", "128"])
    return str(ckpt)


def _for_test(cfg, compile_cache, steps):
    cfg.data.tokenizer = None  # synthetic batches
    cfg.evals = {}
    cfg.train.compile_cache_dir = compile_cache
    cfg.train.steps, cfg.train.log_every = steps, 1
    cfg.train.batch_size, cfg.train.seq_len, cfg.data.max_images = 2, 96, 2
    cfg.checkpoint.every, cfg.checkpoint.keep, cfg.checkpoint.async_save = 1, 10, False
    return cfg


def _params(workdir, step) -> dict:
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return {k: np.asarray(v) for k, v in flat(tree["params"]).items()}


@pytest.mark.slow
def test_two_stage_transfer(tmp_path, compile_cache):
    ckpt = _converted(tmp_path)
    w1, w2 = str(tmp_path / "stage1"), str(tmp_path / "stage2")

    cfg1 = load_config(os.path.join(ROOT, f"experiments/mm1_transfer_stage1.py:{ckpt}"))
    d = cfg1.model.decoder
    assert (cfg1.model.vision.width, d.vocab_size, d.real_vocab_size) == (32, 1152, 1030)
    cfg1 = _for_test(cfg1, compile_cache, steps=3)
    r1 = train(cfg1, w1, iterator=SyntheticBatches(cfg1), special=SPECIAL)
    assert r1.step == 3 and np.isfinite(r1.last_metrics["loss/total"])

    start, end = _params(w1, 1), _params(w1, 3)
    for component in ("vision", "decoder"):
        converted = {"/".join(map(str, p)): v for p, v in restored(os.path.join(ckpt, component), component).items()}
        for path, value in converted.items():
            # Restored from the conversion and frozen: bitwise the converted weights, at the end too.
            np.testing.assert_array_equal(end[f"{component}/{path}"], value, err_msg=path)
    moved = [p for p in end if p.startswith("connector/") and not np.array_equal(end[p], start[p])]
    assert moved, "the connector did not train"

    cfg2 = load_config(os.path.join(ROOT, f"experiments/mm1_transfer_stage2.py:{w1}"))
    cfg2 = _for_test(cfg2, compile_cache, steps=2)
    r2 = train(cfg2, w2, iterator=SyntheticBatches(cfg2, seed=1), special=SPECIAL)
    assert r2.step == 2 and np.isfinite(r2.last_metrics["loss/total"])
    final = _params(w2, 2)
    assert not np.array_equal(final["vision/blocks/q/kernel"], end["vision/blocks/q/kernel"])
    assert not np.array_equal(final["decoder/embed"], end["decoder/embed"])

    main(["export-mm1", "--ckpt", os.path.join(w2, "checkpoints", "2"), "--out", str(tmp_path / "mm1.safetensors")])
    params, model = load_mm1(str(tmp_path / "mm1.safetensors"))
    assert model["decoder"]["real_vocab_size"] == 1030
    exported = flat(params)
    assert sorted(exported) == sorted(final)
    for path, value in final.items():
        np.testing.assert_array_equal(exported[path], value, err_msg=path)


def test_stage_2_without_stage_1_fails_naming_init_from(tmp_path, compile_cache):
    cfg = load_config(os.path.join(ROOT, f"experiments/mm1_transfer_stage2.py:{tmp_path}/missing"))
    cfg = _for_test(cfg, compile_cache, steps=1)
    with pytest.raises(ConfigError, match=r"config\.init_from\.\w+: .*missing' has no state/"):
        train(cfg, str(tmp_path / "w"), iterator=SyntheticBatches(cfg), special=SPECIAL)
