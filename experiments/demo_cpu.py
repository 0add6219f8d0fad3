"""A tiny MM1 that trains in minutes on 2 CPU cores over the embedded demo corpus.

Same architecture as the paper's (CLIP ViT, C-Abstractor, Llama-style decoder), scaled down:
8x8 handwritten digits upsampled to 32x32, 4x4 patches, 16 image tokens per image.
"""

from mm1_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "demo_cpu"
    c.model.dtype = "float32"  # bf16 matmuls are emulated (slow) on most CPUs
    c.model.remat = "none"

    v = c.model.vision
    v.image_size, v.patch_size = 32, 4
    v.width, v.depth, v.heads, v.mlp_dim = 64, 2, 2, 128

    k = c.model.connector
    k.num_tokens, k.hidden, k.depth = 16, 64, 1

    d = c.model.decoder
    d.vocab_size = 1024  # the demo tokenizer's size (mm1_jax.data.demo)
    d.width, d.depth, d.heads, d.kv_heads, d.head_dim, d.mlp_dim = 128, 2, 4, 2, 32, 384
    d.tie_embeddings = True
    d.max_seq_len = 256

    c.data.dir = "demo_data"
    c.data.tokenizer = "demo_data/tokenizer.model"
    c.data.max_images = 6

    c.train.steps = 400
    c.train.batch_size = 8
    c.train.seq_len = 256
    c.train.log_every = 10
    c.train.build_demo_data = True  # `python -m mm1_jax.train` builds demo_data/ when absent
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 20
    c.checkpoint.every = 100
    c.checkpoint.keep = 2
    return c
