"""mm1_jax: MM1-style multimodal LLM pre-training in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="mm1_jax",
    version="0.1.0",
    description="MM1-style multimodal LLM pre-training in JAX/Flax (ViT + C-Abstractor + dense/MoE decoder).",
    packages=find_packages(include=["mm1_jax", "mm1_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax",
        "orbax-checkpoint",
        "grain",
        "array-record",
        "tensorstore",
        "sentencepiece",
        "tokenizers",  # Hugging Face tokenizer.json (Qwen2, Llama-3, ...): mm1_jax/data/tokenizer.py
        "ml-collections",
        "absl-py",
        "pillow",
        "numpy",
        "pyarrow",  # parquet input for the converters (OBELICS-style, text corpora)
        "msgpack",  # the record serialisation inside ArrayRecord shards (mm1_jax/data/records.py)
        "safetensors",  # checkpoints in and out of the weight converter (mm1_jax/convert/)
        "scikit-learn",  # ships the digits images the embedded demo corpus is built from
        "tensorboardX",  # writes the TensorBoard event files of metrics (mm1_jax/writer.py)
        "tqdm",
        "pycocoevalcap",  # CIDEr for captioning evaluation (its PTB tokenizer uses Java if present)
    ],
    extras_require={
        # open-clip-torch (tests/convert's OpenCLIP layout) is installed --no-deps by
        # launch/setup_env.sh: its torchvision dependency has only CUDA wheels for torch 2.13.
        "test": ["pytest", "pytest-xdist", "torch==2.13.0", "transformers", "ftfy",
                 "tensorboard",  # reads the event files back in tests
                 # executing notebooks/quickstart.ipynb headless
                 "nbclient", "nbformat", "ipykernel", "matplotlib"],
        # libtpu of the installed jax's release (also compiles for TPU topologies without a TPU:
        # python -m mm1_jax.aot); tested versions in constraints.txt.
        "tpu": ["jax[tpu]"],
        "seqio": ["seqio"],
    },
)
