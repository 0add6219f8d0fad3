"""Transfer recipe, stage 1 of 2: warm up a fresh connector between a converted CLIP encoder and a
converted LLM, both frozen (the LLaVA-style alignment stage; MM1 itself pre-trains all parts
together, so this stage is an option it does not report, useful when the connector is new).

  python -m mm1_jax.convert vision  --src <clip dir>  --out <ckpt>/vision --image_size 32
  python -m mm1_jax.convert decoder --src <llama dir> --out <ckpt>/decoder --vocab_size 1024
  python -m mm1_jax.train --config=experiments/mm1_transfer_stage1.py:<ckpt> --workdir=<w1>
  python -m mm1_jax.train --config=experiments/mm1_transfer_stage2.py:<w1> --workdir=<w2>

Demo scale: the demo_cpu data and image size; the encoder's and decoder's architecture are
whatever was converted (read from each `model.json`). The tokenizer is the demo's 1024 pieces,
so the decoder needs at least 1024 token rows (`--vocab_size 1024`).
"""

import os

from experiments import demo_cpu
from mm1_jax.convert.init_from import adopt_architecture


def get_config(converted: str = "converted"):
    c = demo_cpu.get_config()
    c.name = "mm1_transfer_stage1"
    for component in ("vision", "decoder"):
        c.init_from[component] = os.path.join(converted, component)
        adopt_architecture(c, component, c.init_from[component])
    c.optim.freeze = (r"^vision/", r"^decoder/")  # only the connector learns
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.train.steps = 200
    c.evals = {}  # the demo table is stage 2's
    c.checkpoint.every = 100
    return c
