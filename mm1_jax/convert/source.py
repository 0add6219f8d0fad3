"""What a `--src` directory holds, checked before anything is converted, and its tokenizer.

- `check_source(src, command)`: the directory exists, holds the kind of model `command`
  converts (a checkpoint of the other kind names its architecture and the subcommand that
  converts it), and holds safetensors rather than pickled PyTorch files (which can run code
  when loaded, so they are never opened).
- `find_tokenizer(src, explicit)`: the LLM's own tokenizer (`tokenizer.json` or
  `tokenizer.model` beside its weights, or `--tokenizer`); `vocab_rows` sizes the converted
  vocabulary so that it holds the tokenizer's ids, the special tokens mm1_jax adds included;
  `copy_tokenizer` keeps the files with the converted checkpoint, where `init_from` finds them.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

from mm1_jax.convert.llama import ARCHITECTURES as DECODERS
from mm1_jax.data.tokenizer import HF_CONFIG, HF_FILE, SP_FILE, Tokenizer
from mm1_jax.errors import CheckpointError

VISION_ARCHITECTURES = ("CLIPVisionModel", "CLIPModel", "CLIPVisionModelWithProjection")
COMMANDS = {"vision": "a CLIP vision tower (HF CLIPVisionModel / CLIPModel, or OpenCLIP)",
            "decoder": f"a language model ({', '.join(DECODERS)})"}
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
# Files beside a tokenizer that travel with it into the converted decoder's `tokenizer/`.
TOKENIZER_FILES = (HF_CONFIG, "special_tokens_map.json", "chat_template.jinja")
TOKENIZER_DIR = "tokenizer"


def source_kind(src: str) -> tuple[str, str]:
    """(command that converts `src`, its architecture name), from the checkpoint's own config."""
    if os.path.exists(os.path.join(src, "open_clip_config.json")):
        return "vision", "open_clip"
    path = os.path.join(src, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{src} has neither config.json (Hugging Face) nor "
                              "open_clip_config.json (OpenCLIP): the converter reads the "
                              "architecture from the checkpoint's own config, never a default; "
                              "copy it next to the weights")
    with open(path) as f:
        config = json.load(f)
    arch = (config.get("architectures") or [config.get("model_type", "?")])[0]
    if arch in VISION_ARCHITECTURES or config.get("model_type") in ("clip", "clip_vision_model"):
        return "vision", arch
    if arch in DECODERS:
        return "decoder", arch
    return "?", arch


def check_source(src: str, command: str) -> str:
    """The architecture name of `src`, which `python -m mm1_jax.convert <command>` converts;
    a CheckpointError saying what to do otherwise."""
    if not os.path.exists(src):
        raise CheckpointError(f"--src {src} does not exist; give the directory holding the "
                              "checkpoint's config.json and *.safetensors")
    if not os.path.isdir(src):
        raise CheckpointError(f"--src {src} is a file; give the directory that holds it and "
                              "the checkpoint's config.json")
    kind, arch = source_kind(src)
    if kind == "?":
        supported = ", ".join(DECODERS + VISION_ARCHITECTURES)
        raise CheckpointError(f"{src} holds a {arch}, which mm1_jax does not convert "
                              f"(supported: {supported}, OpenCLIP)")
    if kind != command:
        raise CheckpointError(f"{src} holds a {arch}, {COMMANDS[kind]}, not "
                              f"{COMMANDS[command]}: convert it with `python -m mm1_jax.convert "
                              f"{kind} --src {src} --out ...`")
    if not glob.glob(os.path.join(src, "*.safetensors")):
        pickles = sorted(os.path.basename(p) for pattern in PICKLES
                         for p in glob.glob(os.path.join(src, pattern)))
        if pickles:
            raise CheckpointError(
                f"{src}: {', '.join(pickles)}: pickled PyTorch checkpoints are not loaded (they "
                "can run code); re-save with `model.save_pretrained(dir, "
                "safe_serialization=True)` (transformers) or `safetensors.torch.save_file`")
        raise CheckpointError(f"{src} holds no *.safetensors weights")
    return arch


def find_tokenizer(src: str, explicit: str | None = None) -> Tokenizer | None:
    """The tokenizer `--tokenizer` names, else the one beside the weights in `src`, if any."""
    path = explicit or src
    if explicit or any(os.path.exists(os.path.join(src, f)) for f in (HF_FILE, SP_FILE)):
        if not os.path.exists(path):
            raise CheckpointError(f"--tokenizer {path} does not exist")
        return Tokenizer(path)
    return None


def vocab_rows(tok: Tokenizer | None, requested: int | None, checkpoint_rows: int) -> int | None:
    """The real vocabulary of the converted decoder: `--vocab_size` if given, else enough rows
    for `tok`'s ids (special tokens included), never fewer than the checkpoint's; None keeps the
    checkpoint's."""
    if tok is None:
        return requested
    if requested is not None:
        if requested < tok.vocab_size:
            raise CheckpointError(
                f"--vocab_size {requested} is smaller than the {tok.vocab_size} ids of the "
                f"tokenizer {tok.path} (its file's {tok.file_vocab_size} plus mm1_jax's special "
                f"tokens); use >= {tok.vocab_size} or leave it out")
        return requested
    return tok.vocab_size if tok.vocab_size > checkpoint_rows else None


def copy_tokenizer(tok: Tokenizer, out: str) -> str:
    """Copies `tok`'s files, unchanged, into `out/tokenizer/`; returns that directory's name
    relative to `out` (model.json's "tokenizer")."""
    target = os.path.join(out, TOKENIZER_DIR)
    os.makedirs(target, exist_ok=True)
    here = os.path.dirname(os.path.abspath(tok.path))
    for name in {os.path.basename(tok.path), *TOKENIZER_FILES}:
        if os.path.exists(os.path.join(here, name)):
            shutil.copyfile(os.path.join(here, name), os.path.join(target, name))
    return TOKENIZER_DIR
