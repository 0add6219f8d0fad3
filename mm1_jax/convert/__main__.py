"""The weight converter: `python -m mm1_jax.convert {vision,decoder,export-hf,export-mm1} ...`.

(The *corpus* converter, raw datasets -> ArrayRecord shards, is `python -m mm1_jax.data.convert`.)
Reads local files only, never downloads. docs/convert.md has the whole story; in short:

  # CLIP / OpenCLIP vision tower, at the run's resolution, sharded for an 8-way FSDP mesh
  python -m mm1_jax.convert vision --src DFN5B-CLIP-ViT-H-14-378/ --out ckpt/vision \\
      --image_size 378 --feature_layer -2 --mesh 1,8,1,1
  # Llama / Mistral / Qwen2 / Mixtral decoder with its tokenizer (tokenizer.json or
  # tokenizer.model in --src); the vocabulary grows to hold our special tokens
  python -m mm1_jax.convert decoder --src Qwen2-7B/ --out ckpt/decoder --pad_vocab_multiple 128
  # our decoder back to Hugging Face (with the run's tokenizer and generation_config.json),
  # and the whole model as one safetensors file
  python -m mm1_jax.convert export-hf --ckpt workdir/checkpoints/1000 --out hf_out/
  python -m mm1_jax.convert export-mm1 --ckpt workdir/checkpoints/1000 --out mm1.safetensors

Then set `config.init_from.{vision,decoder}` to the `--out` directories: the architecture and
the tokenizer come with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from mm1_jax.errors import CheckpointError, cli


def _mesh(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mm1_jax.convert", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    mesh_help = "target mesh sizes over (data,fsdp,tensor,expert), e.g. 1,8,1,1 (default 1,1,1,1)"

    v = sub.add_parser("vision", help="HF CLIPVisionModel / CLIPModel or OpenCLIP -> vision encoder")
    v.add_argument("--src", required=True, help="directory: *.safetensors + config.json "
                   "(HF) or open_clip_config.json (OpenCLIP)")
    v.add_argument("--out", required=True)
    v.add_argument("--image_size", type=int, help="target resolution (position grid resized "
                   "bicubically as PyTorch does); default the checkpoint's")
    v.add_argument("--feature_layer", type=int, default=-1,
                   help="block feeding the connector (model.vision.feature_layer); later blocks are dropped")
    v.add_argument("--mesh", type=_mesh, default=(1, 1, 1, 1), help=mesh_help)

    d = sub.add_parser("decoder", help="HF Llama / Mistral / Qwen2 / Mixtral -> decoder")
    d.add_argument("--src", required=True, help="directory: config.json + model.safetensors "
                   "(or shards with model.safetensors.index.json)")
    d.add_argument("--out", required=True)
    d.add_argument("--vocab_size", type=int, help="tokens of our tokenizer (checkpoint's plus our "
                   "special pieces; default: as many as the tokenizer needs); new rows start at "
                   "the mean embedding")
    d.add_argument("--tokenizer", help="the LLM's tokenizer.json / tokenizer.model (default: the "
                   "one in --src), kept in --out/tokenizer")
    d.add_argument("--pad_vocab_multiple", type=int, default=1,
                   help="pad the vocabulary rows to a multiple (128 helps sharding); padding logits are masked")
    d.add_argument("--upcycle_experts", type=int, default=0,
                   help="sparse upcycling of a dense checkpoint into this many experts "
                   "(copies of the dense FFN, fresh router; not something MM1 reports)")
    d.add_argument("--upcycle_every", type=int, default=1, help="with --upcycle_experts: model.moe.every")
    d.add_argument("--router_seed", type=int, default=0)
    d.add_argument("--max_seq_len", type=int, help="longest sequence the run uses; lets a "
                   "checkpoint with a sliding window at least this long convert")
    d.add_argument("--mesh", type=_mesh, default=(1, 1, 1, 1), help=mesh_help)

    for name, what in (("export-hf", "our dense decoder -> HF Llama/Qwen2 (model.safetensors + config.json)"),
                       ("export-mm1", "the whole MM1 model -> one safetensors file (docs/convert.md)")):
        e = sub.add_parser(name, help=what)
        e.add_argument("--ckpt", required=True, help="a converted directory or a run's "
                       "<workdir>/checkpoints/<step>")
        e.add_argument("--out", required=True)
        if name == "export-hf":
            e.add_argument("--tokenizer", help="tokenizer to ship with the export (default: the "
                           "run's data.tokenizer, or the converted decoder's)")
    return p.parse_args(argv)


def _restore_params(path: str) -> dict:
    """The `params` tree of a checkpoint directory's `state/`, as host numpy arrays."""
    import orbax.checkpoint as ocp

    if not os.path.isdir(os.path.join(path, "state")):
        raise CheckpointError(f"--ckpt {path} has no state/: give a directory `python -m "
                              "mm1_jax.convert` wrote, or a run's <workdir>/checkpoints/<step>")
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.restore(os.path.join(os.path.abspath(path), "state"))
    import jax

    return jax.tree.map(np.asarray, tree["params"])


def _model_config(path: str):
    from mm1_jax.config import base_config
    from mm1_jax.convert.init_from import source_model_config

    model = base_config().model
    for section, fields in source_model_config(path).items():
        if isinstance(fields, dict) and section in model:
            model[section].update({k: v for k, v in fields.items() if k in model[section]})
    return model


def _export_tokenizer(ckpt: str, explicit: str | None):
    """The tokenizer an export ships: `--tokenizer`, else the one the checkpoint names."""
    from mm1_jax.convert.init_from import source_tokenizer
    from mm1_jax.data.tokenizer import Tokenizer

    path = explicit or source_tokenizer(ckpt)
    if path is None:
        print(f"warning: {ckpt} names no tokenizer: the export has no tokenizer files and no "
              "generation_config.json; pass --tokenizer", file=sys.stderr)
        return None
    if not os.path.exists(path):
        raise CheckpointError(f"tokenizer {path} (named by {explicit and '--tokenizer' or ckpt}) "
                              "does not exist; pass --tokenizer")
    return Tokenizer(path)


def conversion_summary(out: str, reader, seconds: float) -> str:
    """The closing line of a weight conversion: what was written, from what, how fast."""
    with open(os.path.join(out, "model.json")) as f:
        meta = json.load(f)
    written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    line = (f"wrote {out}: {meta['architecture']} -> {reader.params_written} parameters "
            f"({reader.values_written / 1e6:.2f}M values, float32), {written / 1e6:.1f} MB on disk;"
            f" read {reader.tensors_read} tensors ({reader.bytes_read / 1e6:.1f} MB) of "
            f"{meta['source']} in {seconds:.1f} s, at most {reader.peak_tensors} tensors "
            f"({reader.peak_bytes / 1e6:.1f} MB) held at once")
    if meta.get("tokenizer"):
        line += (f"; tokenizer kept in {os.path.join(out, meta['tokenizer'])} "
                 f"({meta['tokenizer_vocab_size']} ids)")
    return line


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    from mm1_jax.convert import export, writer

    t = time.perf_counter()
    if args.command in ("vision", "decoder"):
        if args.command == "vision":
            _, reader = writer.convert_vision(args.src, args.out, image_size=args.image_size,
                                              feature_layer=args.feature_layer, mesh_shape=args.mesh)
        else:
            _, reader = writer.convert_decoder(
                args.src, args.out, mesh_shape=args.mesh, router_seed=args.router_seed,
                max_seq_len=args.max_seq_len, vocab_size=args.vocab_size,
                pad_vocab_multiple=args.pad_vocab_multiple, upcycle_experts=args.upcycle_experts,
                upcycle_every=args.upcycle_every, tokenizer=args.tokenizer)
        print(conversion_summary(args.out, reader, time.perf_counter() - t), file=sys.stderr)
        return
    params = _restore_params(args.ckpt)
    if args.command == "export-hf":
        files = export.export_hf_decoder(params["decoder"], _model_config(args.ckpt), args.out,
                                         _export_tokenizer(args.ckpt, args.tokenizer))
    else:
        from mm1_jax.convert.init_from import source_model_config

        export.export_mm1(params, source_model_config(args.ckpt), args.out)
        files = [os.path.basename(args.out)]
    print(f"wrote {args.out}: {', '.join(files)} in {time.perf_counter() - t:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    cli(main)()
