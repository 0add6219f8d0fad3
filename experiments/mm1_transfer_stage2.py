"""Transfer recipe, stage 2 of 2: train everything, starting every component from the end of
stage 1 (experiments/mm1_transfer_stage1.py; pass its workdir).

  python -m mm1_jax.train --config=experiments/mm1_transfer_stage2.py:<stage-1 workdir> --workdir=<w2>
"""

from experiments import demo_cpu
from mm1_jax.convert.init_from import adopt_architecture, latest_checkpoint


def get_config(stage1_workdir: str = "transfer_stage1"):
    c = demo_cpu.get_config()
    c.name = "mm1_transfer_stage2"
    start = latest_checkpoint(stage1_workdir) or stage1_workdir  # absent: start-up names it
    for component in ("vision", "connector", "decoder"):
        c.init_from[component] = start
        adopt_architecture(c, component, start)
    c.optim.freeze = ()  # full training
    c.optim.lr = 3e-4  # below stage 1's: the converted weights are already good
    c.optim.warmup_steps = 20
    c.train.steps = 200
    c.checkpoint.every = 100
    return c
