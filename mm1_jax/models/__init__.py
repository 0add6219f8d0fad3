"""Models: CLIP ViT encoder, connectors, dense/MoE decoder and the MM1 model that joins them."""
