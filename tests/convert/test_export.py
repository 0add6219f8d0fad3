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


def test_export_ships_the_tokenizer_and_generate_stops_at_eos_where_ours_does(tmp_path):
    """A Qwen2 with its own byte-level BPE tokenizer.json: `convert decoder` keeps the tokenizer
    and grows the vocabulary by our three image tokens; `export-hf` writes the tokenizer files
    and generation_config.json, so transformers' `generate` (nothing passed but the prompt)
    stops at the tokenizer's EOS exactly where our greedy decoding reaches it."""
    from mm1_jax.data.tokenizer import Tokenizer
    from tests.data.test_tokenizer import byte_level_bpe

    src = tmp_path / "hf"
    byte_level_bpe(src, "qwen2")  # 700 merges/bytes + 3 specials
    n = Tokenizer(str(src)).file_vocab_size
    model = hf_model("qwen2", vocab_size=n, initializer_range=0.2)  # varied greedy tokens
    prompt = np.asarray([Tokenizer(str(src)).encode("if x is")])
    with torch.no_grad():
        free = model.generate(torch.from_numpy(prompt), max_new_tokens=8, do_sample=False,
                              eos_token_id=None, pad_token_id=0).numpy()[0, prompt.shape[1]:]
    # EOS: the first token greedy decoding makes for the third time or later that it never made
    # before, so generation must stop there, not earlier.
    k = next(i for i in range(2, 8) if free[i] not in free[:i])
    config = json.load(open(src / "tokenizer_config.json"))
    config["eos_token"] = Tokenizer(str(src)).id_to_piece(int(free[k]))
    json.dump(config, open(src / "tokenizer_config.json", "w"))
    model.save_pretrained(str(src))

    main(["decoder", "--src", str(src), "--out", str(tmp_path / "ours")])
    meta = json.load(open(tmp_path / "ours" / "model.json"))
    assert meta["model"]["decoder"]["vocab_size"] == n + 3  # <image>, <img>, </img> appended
    tok = Tokenizer(str(tmp_path / "ours" / meta["tokenizer"]))
    assert tok.eos_id == free[k] and tok.vocab_size == n + 3
    main(["export-hf", "--ckpt", str(tmp_path / "ours"), "--out", str(tmp_path / "back")])

    back = tmp_path / "back"
    assert json.load(open(back / "generation_config.json")) == {
        "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    theirs_tok = transformers.AutoTokenizer.from_pretrained(str(back))
    assert theirs_tok.convert_tokens_to_ids(["<image>", "<img>", "</img>"]) == [n, n + 1, n + 2]
    assert theirs_tok.eos_token_id == tok.eos_id
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(back)).eval()
    with torch.no_grad():
        theirs = exported.generate(torch.from_numpy(prompt), max_new_tokens=8,
                                   do_sample=False).numpy()[0, prompt.shape[1]:]
    dec, _ = load_converted(str(tmp_path / "ours"), "decoder", base_config())
    ours = greedy(dec, prompt, 8)[0, prompt.shape[1]:]
    ours = ours[:list(ours).index(tok.eos_id) + 1]  # up to and with the first EOS
    np.testing.assert_array_equal(theirs, ours)
    assert len(ours) == k + 1 and ours[-1] == tok.eos_id
