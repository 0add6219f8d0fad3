"""A ~110M-parameter MM1 for CPU benchmarks: ViT-S/16-224, C-Abstractor 64, a 95M decoder."""

from mm1_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "cpu_100m"
    c.model.dtype = "float32"
    c.model.remat = "none"
    v = c.model.vision
    v.image_size, v.patch_size, v.width, v.depth, v.heads, v.mlp_dim = 224, 16, 384, 6, 6, 1536
    c.model.connector.num_tokens, c.model.connector.hidden, c.model.connector.depth = 64, 384, 2
    d = c.model.decoder
    d.width, d.depth, d.heads, d.kv_heads, d.head_dim, d.mlp_dim = 768, 10, 12, 12, 64, 2048
    d.tie_embeddings = True
    c.train.seq_len, c.train.batch_size = 1024, 4
    c.data.max_images = 4
    return c
