"""README "Start from a pretrained LLM and CLIP", command by command, on tiny models: a Qwen2
with its own byte-level BPE tokenizer.json and a CLIP are converted (no architecture flags), a
COCO captions file with its images becomes the corpus, `python -m mm1_jax.train` starts from
both with `init_from` on experiments/my_corpus.py, adding a captioning evaluator on the command
line; `python -m mm1_jax.eval --workdir=DIR` (nothing replayed) reproduces the evaluation the
run made at its end; `export-hf` gives a model whose transformers `generate` equals ours and
stops at EOS."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mm1_jax.cli_config import saved_config
from mm1_jax.convert.__main__ import main as convert_weights
from mm1_jax.data.convert.__main__ import main as convert_corpus
from mm1_jax.data.tokenizer import Tokenizer
from mm1_jax.eval.generate import generate
from mm1_jax.eval.restore import restore_model
from tests.data.test_tokenizer import byte_level_bpe

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
STEPS = 40


def _llm_and_clip(tmp_path) -> tuple[str, str]:
    qwen = tmp_path / "Qwen2-tiny"
    byte_level_bpe(qwen, "qwen2")  # tokenizer.json + tokenizer_config.json, 703 ids
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=703, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
        eos_token_id=700)).save_pretrained(str(qwen))
    clip = tmp_path / "clip-tiny"
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=4)).save_pretrained(str(clip))
    return str(qwen), str(clip)


def _coco(tmp_path) -> tuple[str, str]:
    """captions.json + images/, COCO's layout: a coloured square per image, two captions."""
    images = tmp_path / "train2017"
    images.mkdir()
    coco = {"images": [], "annotations": []}
    for i in range(24):
        color = list(COLORS)[i % 3]
        name = f"{i:012d}.jpg"
        Image.new("RGB", (40, 40), COLORS[color]).save(images / name)
        coco["images"].append({"id": i, "file_name": name})
        for j, text in enumerate((f"a photo of a {color} square.", f"a {color} square.")):
            coco["annotations"].append({"id": 10 * i + j, "image_id": i, "caption": text})
    (tmp_path / "captions_train2017.json").write_text(json.dumps(coco))
    return str(tmp_path / "captions_train2017.json"), str(images)


def _run(*args, timeout=900) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def test_from_a_pretrained_llm_and_clip_to_an_hf_export(tmp_path, compile_cache):
    qwen, clip = _llm_and_clip(tmp_path)
    ckpt = tmp_path / "ckpt"
    convert_weights(["vision", "--src", clip, "--out", str(ckpt / "vision")])
    convert_weights(["decoder", "--src", qwen, "--out", str(ckpt / "decoder")])
    ann, images = _coco(tmp_path)
    convert_corpus(["coco", f"--annotations={ann}", f"--image_root={images}",
                    f"--output={tmp_path / 'corpus'}", "--num_shards=2"])

    workdir = str(tmp_path / "run")
    train = _run(
        "mm1_jax.train", "--config=experiments/my_corpus.py:caption", f"--workdir={workdir}",
        f"--config.data.dir={tmp_path / 'corpus'}",
        f"--config.init_from.vision={ckpt / 'vision'}", f"--config.init_from.decoder={ckpt / 'decoder'}",
        # the fresh connector and the run's size: the run's choices, not the checkpoints'
        "--config.model.connector.kind=avg_pool", "--config.model.connector.num_tokens=16",
        "--config.model.dtype=float32", "--config.model.remat=none",
        f"--config.train.steps={STEPS}", "--config.train.batch_size=8", "--config.train.seq_len=64",
        "--config.data.max_images=2", "--config.optim.lr=0.01", "--config.optim.warmup_steps=5",
        f"--config.checkpoint.every={STEPS}", f"--config.train.compile_cache_dir={compile_cache}",
        "--config.evals.coco.type=captioning", f"--config.evals.coco.annotations={ann}",
        f"--config.evals.coco.images={images}", "--config.evals.coco.shots=0",
        "--config.evals.coco.support_fraction=0", "--config.evals.coco.limit=6",
        "--config.evals.coco.max_new_tokens=8")
    log = train.stderr
    # What was adopted and loaded, from where, is in the log.
    adopted = next(line for line in log.splitlines()
                   if "architecture from the checkpoints of config.init_from: " in line)
    assert "model.vision.image_size=32" in adopted and "model.decoder.width=64" in adopted
    assert f"data.tokenizer='{ckpt / 'decoder' / 'tokenizer'}'" in adopted
    assert "init_from.decoder: " in log and "(model.json, converted from Qwen2ForCausalLM)" in log
    assert "vocabulary 706 tokens in 706 rows" in log  # 703 + <image>, <img>, </img>
    at_end = json.load(open(os.path.join(workdir, "eval.json")))
    assert at_end["step"] == STEPS and "coco/cider_0shot" in at_end

    # Evaluation from the workdir alone: the saved config, the same numbers.
    evaluated = _run("mm1_jax.eval", f"--workdir={workdir}")
    assert f"coco/cider_0shot  {at_end['coco/cider_0shot']:.4f}" in evaluated.stdout
    assert json.load(open(os.path.join(workdir, "eval.json")))["coco/cider_0shot"] == at_end["coco/cider_0shot"]

    out = str(tmp_path / "hf_export")
    convert_weights(["export-hf", "--ckpt", os.path.join(workdir, "checkpoints", str(STEPS)),
                     "--out", out])
    cfg = saved_config(workdir)
    tok = Tokenizer(cfg.data.tokenizer)
    prompt = [tok.bos_id, *tok.encode("a photo of a")]
    model, _, _ = restore_model(cfg, workdir)
    n = cfg.model.vision.image_size
    (ours,) = generate(model, [prompt], np.zeros((1, 1, n, n, 3), np.uint8), np.zeros((1, 1), bool),
                       max_new_tokens=12, stop_ids=(tok.eos_id,), pad_id=tok.pad_id)
    exported = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():  # eos and pad from the export's generation_config.json
        theirs = exported.generate(torch.tensor([prompt]), max_new_tokens=12,
                                   do_sample=False)[0, len(prompt):].tolist()
    assert theirs == ours + [tok.eos_id] and len(ours) < 11, (tok.decode(ours), theirs)
    assert transformers.AutoTokenizer.from_pretrained(out).decode(theirs, skip_special_tokens=True) == tok.decode(ours)
