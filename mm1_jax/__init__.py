"""mm1_jax: MM1-style multimodal LLM pre-training in JAX/Flax."""
