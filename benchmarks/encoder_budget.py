"""Encoder FLOPs per training step with every image slot encoded and with `model.image_budget`.

    python benchmarks/encoder_budget.py [--config=experiments/mm1_ablation_base.py]
        [--rows_per_chip=8] [--chips=64] [--budgets=0.6,0.85] [--images_per_row=9.3,10.9]

Lowers (nothing is compiled or allocated) the model's own image paths for one chip's rows,
[rows_per_chip, max_images] slots: `MM1Model.encode_images` (every slot) and
`MM1Model.encode_filled` (gather the filled slots into ceil(budget x slots) images, ViT +
connector, put them back) for each budget, and reads XLA's FLOP count of each. XLA counts the ViT's scanned
block stack once, so each count adds the other blocks at the encoder's batch
(`stats.uncounted_block_flops`). Training FLOPs = 3 x forward; per step = per chip x chips.
"Real images" is what perf/mfu counts as model FLOPs (mm1_jax/train/metrics.py): images per row
x rows x the model's training FLOPs per image.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import header  # noqa: E402
from mm1_jax.config import load_config  # noqa: E402
from mm1_jax.models.mm1 import MM1Model, image_budget  # noqa: E402
from mm1_jax.models.stats import image_flops, uncounted_block_flops, xla_flops  # noqa: E402
from mm1_jax.data.synthetic import SPECIAL  # noqa: E402


def encoder_flops(cfg, rows: int, budget: float | None) -> tuple[float, int, float]:
    """(training FLOPs of one chip's image path, images it encodes, the model's training FLOPs
    per image) for `rows` rows under `budget` (None: every slot, `encode_images`)."""
    c = cfg.copy_and_resolve_references()
    c.model.image_budget = budget
    model = nnx.eval_shape(lambda: MM1Model(c.model, image_token_id=SPECIAL.image,
                                            rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    n, hw = c.data.max_images, c.model.vision.image_size
    images = jax.ShapeDtypeStruct((rows, n, hw, hw, 3), jnp.uint8)
    if budget is None:
        fn, args = lambda st, im: nnx.merge(graphdef, st).encode_images(im), (state, images)
    else:
        mask = jax.ShapeDtypeStruct((rows, n), jnp.bool_)
        fn = lambda st, im, m: nnx.merge(graphdef, st).encode_filled(im, m)[0]  # noqa: E731
        args = (state, images, mask)
    encoded = image_budget(budget, rows * n)
    flops = 3.0 * (xla_flops(fn, *args) + uncounted_block_flops(model.vision, encoded))
    return flops, encoded, image_flops(model, hw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="experiments/mm1_ablation_base.py")
    p.add_argument("--rows_per_chip", type=int, default=8)
    p.add_argument("--chips", type=int, default=64)
    p.add_argument("--budgets", default="0.6,0.85")
    p.add_argument("--images_per_row", default="9.3,10.9")
    a = p.parse_args()
    cfg = load_config(a.config)
    v, k = cfg.model.vision, cfg.model.connector
    print(header("encoder FLOPs per step with and without model.image_budget "
                 "(benchmarks/encoder_budget.py)"))
    print(f"# {cfg.name}: ViT {v.width}x{v.depth} at {v.image_size}/{v.patch_size}, {k.kind} "
          f"{k.num_tokens}; {a.rows_per_chip} rows x {cfg.data.max_images} slots per chip, "
          f"{a.chips} chips ({a.rows_per_chip * a.chips} rows per step); training FLOPs (3 x "
          "XLA forward)")
    every, slots, per_image = encoder_flops(cfg, a.rows_per_chip, None)
    rows = [("every slot (image_budget None)", slots, every)]
    for budget in (float(x) for x in a.budgets.split(",")):
        flops, encoded, _ = encoder_flops(cfg, a.rows_per_chip, budget)
        rows.append((f"image_budget {budget}", encoded, flops))
    for per_row in (float(x) for x in a.images_per_row.split(",")):
        real = per_row * a.rows_per_chip
        rows.append((f"real images at {per_row} per row (model FLOPs, perf/mfu)", real,
                     real * per_image))
    print("| image path | images per chip | TFLOP per chip | PFLOP per step | / every slot | "
          "TFLOP per image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, images, flops in rows:
        print(f"| {name} | {images:g} | {flops / 1e12:.2f} | {flops * a.chips / 1e15:.3f} | "
              f"{flops / every:.4f} | {flops / images / 1e12:.4f} |")
    print(f"# stats.flops_per_image (one image, mm1_jax/models/stats.py): {per_image / 1e12:.4f} "
          "TFLOP")


if __name__ == "__main__":
    main()
