"""Out to Hugging Face: Llama -> ours -> Llama gives identical tensors, transformers loads the
export and generates the same greedy tokens as our decoder."""

import json

import numpy as np
import pytest
import jax.numpy as jnp
from safetensors.numpy import load_file

from mm1_jax.config import base_config
from mm1_jax.convert.__main__ import main
from tests.convert.helpers import load_converted
from tests.convert.test_decoder import hf_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def greedy(dec, prompt: np.ndarray, steps: int) -> np.ndarray:
    """Our greedy decoding: the whole prefix through the decoder each step, argmax of the last."""
    seq = prompt
    for _ in range(steps):
        logits, _ = dec(dec.embed_tokens(jnp.asarray(seq)), jnp.asarray(np.arange(seq.shape[1])[None]),
                        jnp.ones(seq.shape, jnp.int32), train=False)
        seq = np.concatenate([seq, np.asarray(logits[:, -1].argmax(-1))[:, None]], axis=1)
    return seq


@pytest.mark.parametrize("arch,overrides,flags", [
    ("llama", {}, []),
    ("llama", {"tie_word_embeddings": True}, ["--vocab_size", "97", "--pad_vocab_multiple", "128"]),
    ("qwen2", {}, []),
])
def test_round_trip_and_greedy_generation(tmp_path, arch, overrides, flags):
    model = hf_model(arch, **overrides)
    src = str(tmp_path / "hf")
    model.save_pretrained(src)
    main(["decoder", "--src", src, "--out", str(tmp_path / "ours"), *flags])
    main(["export-hf", "--ckpt", str(tmp_path / "ours"), "--out", str(tmp_path / "back")])

    before, after = load_file(f"{src}/model.safetensors"), load_file(str(tmp_path / "back/model.safetensors"))
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    config = json.load(open(tmp_path / "back/config.json"))
    assert config["architectures"] == [model.config.architectures[0]]

    exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back")).eval()
    prompt = np.random.default_rng(3).integers(0, 97, (1, 5))
    with torch.no_grad():
        theirs = exported.generate(torch.from_numpy(prompt), max_new_tokens=8, do_sample=False,
                                   pad_token_id=0, eos_token_id=None).numpy()
    dec, _ = load_converted(str(tmp_path / "ours"), "decoder", base_config())
    ours = greedy(dec, prompt, 8)
    np.testing.assert_array_equal(ours, theirs)


def test_mm1_safetensors_layout_round_trip(tmp_path):
    """Names are our paths joined by "." (list indices as digits), shapes and values unchanged,
    and the model config rides along in the metadata (docs/convert.md)."""
    from mm1_jax.convert.export import export_mm1, load_mm1
    from mm1_jax.convert.stream import SafetensorsReader

    rng = np.random.default_rng(0)
    params = {"vision": {"blocks": {"q": {"kernel": rng.normal(size=(2, 8, 8)).astype(np.float32)}}},
              "decoder": {"embed": rng.normal(size=(16, 8)).astype(np.float32),
                          "periods": {"blocks": {0: {"attn": {"wq": rng.normal(size=(2, 8, 2, 4)).astype(np.float32)}}}}}}
    model = base_config().model
    export_mm1(params, model, str(tmp_path / "mm1.safetensors"))
    reader = SafetensorsReader(str(tmp_path / "mm1.safetensors"))
    assert sorted(reader.keys()) == ["decoder.embed", "decoder.periods.blocks.0.attn.wq", "vision.blocks.q.kernel"]
    back, model_back = load_mm1(str(tmp_path / "mm1.safetensors"))
    np.testing.assert_array_equal(back["decoder"]["periods"]["blocks"][0]["attn"]["wq"],
                                  params["decoder"]["periods"]["blocks"][0]["attn"]["wq"])
    np.testing.assert_array_equal(back["vision"]["blocks"]["q"]["kernel"], params["vision"]["blocks"]["q"]["kernel"])
    assert model_back["decoder"]["width"] == model.decoder.width
    # safetensors' own reader agrees with ours on the file.
    np.testing.assert_array_equal(load_file(str(tmp_path / "mm1.safetensors"))["decoder.embed"],
                                  params["decoder"]["embed"])
