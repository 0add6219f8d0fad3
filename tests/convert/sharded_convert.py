"""Run in a subprocess with 8 simulated CPU devices (tests/convert/test_sharded.py): a tiny HF
Llama, saved as sharded safetensors, converted for a (fsdp=4, tensor=2) mesh, then restored by
`init_from` into a training state on that mesh. Prints one JSON line of what it measured."""

import json
import sys

import jax
import numpy as np
import torch
import transformers

from mm1_jax.config import load_config
from mm1_jax.convert.init_from import apply_init_from, source_model_config
from mm1_jax.convert.writer import convert_decoder
from mm1_jax.startup import start
from mm1_jax.train.state import abstract_train_state, init_train_state
from mm1_jax.data.synthetic import SPECIAL

MESH = (1, 4, 2, 1)


def main(tmp: str):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, head_dim=8, rope_theta=1e4))
    hf.save_pretrained(f"{tmp}/hf", max_shard_size="40KB")
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    _, reader = convert_decoder(f"{tmp}/hf", f"{tmp}/decoder", mesh_shape=MESH)

    cfg = load_config("experiments/demo_cpu.py")
    cfg.model.decoder.update(source_model_config(f"{tmp}/decoder")["decoder"])
    cfg.init_from.decoder = f"{tmp}/decoder"
    cfg.mesh.shape = MESH
    cfg.data.tokenizer, cfg.evals = None, {}
    run = start(cfg, special=SPECIAL, corpus=False)
    abstract, shardings = abstract_train_state(run)
    state = apply_init_from(cfg, abstract, init_train_state(run, abstract, shardings))

    dec = state.params["decoder"]
    wq = dec["periods"]["blocks"][0]["attn"]["wq"]
    same_sharding = all(a.sharding == s for a, s in zip(jax.tree.leaves(dec),
                                                        jax.tree.leaves(shardings.params["decoder"])))
    print(json.dumps({
        "peak_tensors": reader.peak_tensors,
        "peak_bytes": reader.peak_bytes,
        "model_bytes": int(sum(v.nbytes for v in sd.values())),
        "largest_tensor_bytes": int(max(v.nbytes for v in sd.values())),
        "same_sharding": same_sharding,
        "embed_shard": list(dec["embed"].addressable_shards[0].data.shape),
        "embed_equal": bool(np.array_equal(np.asarray(dec["embed"]), sd["model.embed_tokens.weight"])),
        "wq_equal": bool(np.array_equal(np.asarray(wq)[1].reshape(64, 64),
                                        sd["model.layers.1.self_attn.q_proj.weight"].T)),
        "vision_untouched": bool(np.array_equal(
            np.asarray(state.params["vision"]["cls"]),
            np.asarray(init_train_state(run, abstract, shardings).params["vision"]["cls"]))),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
