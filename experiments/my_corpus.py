"""MM1 on your own corpus, starting from a pretrained LLM and CLIP (README, "Start from a
pretrained LLM and CLIP"). Nothing here is demo-specific: no evaluator is inherited, and the
architecture of the encoder and the decoder is whatever was converted.

    python -m mm1_jax.train --config=experiments/my_corpus.py:caption --workdir=runs/mine \\
        --config.data.dir=corpus/ \\
        --config.init_from.vision=ckpt/vision --config.init_from.decoder=ckpt/decoder

The argument names the kinds the corpus holds (comma-separated, of interleaved, caption,
text; default all three): the mixture is MM1's 45/45/10 over those kinds, renormalised (a
COCO corpus: `:caption`).

Keys to set (on the command line as above, or in a copy of this file):
- data.dir: the corpus, `python -m mm1_jax.data.convert {coco,webdataset,obelics,text,...}`.
- init_from.vision / init_from.decoder: directories `python -m mm1_jax.convert` wrote. Their
  architecture comes with them (model.json), and so does the LLM's tokenizer, which becomes
  data.tokenizer unless you set it; a field set here that contradicts a checkpoint is an error
  listing the flags that fix it.
- model.connector.*: the connector starts fresh; MM1's is the C-Abstractor with 144 tokens per
  image (a side of 12 needs an encoder grid of at least 12 patches; fewer tokens for smaller
  encoders, e.g. `kind=avg_pool`, `num_tokens=64`).
- train.steps, train.batch_size, train.seq_len, optim.lr (default MM1's eta(N)),
  optim.warmup_steps, optim.freeze (e.g. `'("^vision/",)'` to keep the encoder as it is).
- evals.<name>: none by default; add them on the command line, e.g.
  `--config.evals.coco.type=captioning --config.evals.coco.annotations=captions_val2017.json
  --config.evals.coco.images=val2017/ --config.evals.coco.every=5000`.
- mesh.shape, model.dtype: the base config's (bf16 compute, data parallel over every device).
"""

from mm1_jax.config import base_config
from mm1_jax.data.kinds import KINDS

MM1_MIXTURE = {"interleaved": 0.45, "caption": 0.45, "text": 0.10}  # MM1 section 4


def get_config(kinds: str = ",".join(KINDS)):
    c = base_config()
    c.name = "my_corpus"
    chosen = [k.strip() for k in kinds.split(",") if k.strip()]
    total = sum(MM1_MIXTURE.get(k, 0.0) for k in chosen)
    # a kind that does not exist is named by config.validate
    c.data.mixture = {k: MM1_MIXTURE.get(k, 1.0) / (total or 1.0) for k in chosen}
    return c
