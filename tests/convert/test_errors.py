"""Errors of the weight converter that send the user the right way: each names the file or the
flag and says what to do; through the command each is one line and exit status 2."""

import json
import os
import subprocess
import sys

import pytest

from mm1_jax.convert.__main__ import main
from mm1_jax.errors import EXIT_USER_ERROR, CheckpointError
from tests.convert.helpers import save_hf
from tests.convert.test_decoder import hf_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pickled_llama(directory) -> str:
    """A Llama saved the old way: config.json + pytorch_model.bin (a pickle)."""
    model = hf_model("llama")
    directory.mkdir()
    model.config.architectures = ["LlamaForCausalLM"]
    model.config.save_pretrained(str(directory))
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return str(directory)


def _clip(directory) -> str:
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=4))
    return save_hf(model, str(directory))


def test_pickled_pytorch_checkpoint_is_refused_with_the_way_to_resave(tmp_path):
    src = _pickled_llama(tmp_path / "bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: pickled PyTorch checkpoints are "
                       r"not loaded \(they can run code\); re-save with `model.save_pretrained"
                       r"\(dir, safe_serialization=True\)`"):
        main(["decoder", "--src", src, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_the_command_prints_one_line_and_exits_2(tmp_path):
    src = _pickled_llama(tmp_path / "bin")
    run = subprocess.run([sys.executable, "-m", "mm1_jax.convert", "decoder", "--src", src,
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert run.returncode == EXIT_USER_ERROR, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {src}: pytorch_model.bin: pickled PyTorch checkpoints"), last


def test_a_missing_src_does_not_exist(tmp_path):
    for command in ("vision", "decoder"):
        with pytest.raises(CheckpointError, match=rf"--src {tmp_path}/nowhere does not exist"):
            main([command, "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])


def test_a_checkpoint_of_the_other_kind_names_its_architecture_and_the_subcommand(tmp_path):
    llama = save_hf(hf_model("llama"), str(tmp_path / "llama"))
    with pytest.raises(CheckpointError, match=rf"{llama} holds a LlamaForCausalLM, a language "
                       rf"model .*: convert it with `python -m mm1_jax.convert decoder --src {llama}"):
        main(["vision", "--src", llama, "--out", str(tmp_path / "out")])
    clip = _clip(tmp_path / "clip")
    with pytest.raises(CheckpointError, match=rf"{clip} holds a CLIPVisionModel, a CLIP vision "
                       rf"tower .*: convert it with `python -m mm1_jax.convert vision --src {clip}"):
        main(["decoder", "--src", clip, "--out", str(tmp_path / "out")])
    config = json.load(open(f"{llama}/config.json"))
    config["architectures"] = ["GPT2LMHeadModel"]
    json.dump(config, open(f"{llama}/config.json", "w"))
    with pytest.raises(CheckpointError, match=r"holds a GPT2LMHeadModel, which mm1_jax does not "
                       r"convert \(supported: LlamaForCausalLM"):
        main(["decoder", "--src", llama, "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("keep", [0.5, 20 / 1e9])  # cut in the tensors, cut in the header
def test_a_damaged_safetensors_file_is_named(tmp_path, keep):
    src = save_hf(hf_model("llama"), str(tmp_path / "hf"))
    path = os.path.join(src, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:max(20, int(len(data) * keep))])
    with pytest.raises(CheckpointError, match=rf"{path}: a damaged safetensors file \(.*\); "
                       r"download or save it again"):
        main(["decoder", "--src", src, "--out", str(tmp_path / "out")])


def test_a_missing_shard_of_an_index_is_named(tmp_path):
    src = str(tmp_path / "hf")
    hf_model("llama").save_pretrained(src, max_shard_size="40KB")
    shards = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
    os.remove(os.path.join(src, shards[-1]))
    with pytest.raises(CheckpointError, match=rf"{shards[-1]}: missing .*download or save it again"):
        main(["decoder", "--src", src, "--out", str(tmp_path / "out")])


def test_a_vocab_size_below_the_tokenizer_is_refused(tmp_path):
    from tests.data.test_tokenizer import byte_level_bpe

    src = byte_level_bpe(tmp_path / "hf", "qwen2")  # 703 ids, 706 with our image tokens
    save_hf(hf_model("qwen2", vocab_size=703), src)
    with pytest.raises(CheckpointError, match=r"--vocab_size 704 is smaller than the 706 ids of "
                       r"the tokenizer .*tokenizer.json \(its file's 703 plus mm1_jax's special "
                       r"tokens\); use >= 706 or leave it out"):
        main(["decoder", "--src", src, "--out", str(tmp_path / "out"), "--vocab_size", "704"])
