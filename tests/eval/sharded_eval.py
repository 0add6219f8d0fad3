"""Run in a subprocess with 8 simulated CPU devices (tests/eval/test_generate.py): the demo model
evaluated on one device and with its parameters FSDP-sharded over 8 (mesh fsdp=8), through the
trainer's own evaluation hook. Prints one JSON line of what it measured."""

import json

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from mm1_jax.config import evaluator, load_config
from mm1_jax.data.tokenizer import Tokenizer, train_tokenizer
from mm1_jax.eval import evaluators, inference
from mm1_jax.startup import start
from mm1_jax.train.loop import evaluate
from tests.helpers import create_train_state


def main(tmp: str) -> None:
    texts = ["a red square on white", "the quick brown fox jumps over the lazy dog",
             "Question: what color? Short answer: red"] * 30
    train_tokenizer(texts, 300, f"{tmp}/tok.model")
    with open(f"{tmp}/held.txt", "w") as f:
        f.write("\n\n".join(texts[:6]))
    cfg = load_config("experiments/demo_cpu.py")
    cfg.data.tokenizer = f"{tmp}/tok.model"
    cfg.model.decoder.vocab_size = Tokenizer(cfg.data.tokenizer).vocab_size  # decodable ids only
    cfg.evals = {"held": evaluator("perplexity", files=(f"{tmp}/held.txt",), batch_size=8)}
    seen = {}
    real = inference.generate_texts

    def spy(model, tok, items, load_image, **kw):  # the parameters as generation sees them
        seen["params"] = [("/".join(map(str, p)), v.shape, v.sharding)
                          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
        return real(model, tok, items, load_image, **kw)

    inference.generate_texts = spy
    out = {}
    for name, shape, devices in (("one", (1, 1, 1, 1), jax.devices()[:1]),
                                 ("fsdp8", (1, 8, 1, 1), jax.devices())):
        cfg.mesh.shape = shape
        run = start(cfg, devices=devices, corpus=False)
        state, _ = create_train_state(run)
        ppl = evaluate(run, evaluators.from_config(run.cfg), state)["held/ppl"]
        tok = evaluators.from_config(run.cfg)[0].ctx.tok
        prompts = [inference.PromptItem([tok.bos_id] + tok.encode(t), []) for t in texts[:8]]
        with jax.set_mesh(run.mesh):
            model = nnx.merge(state.recipe.graphdef, state.params)
            gen = inference.generate_texts(model, tok, prompts, None, max_new_tokens=6,
                                           batch_size=8, image_size=32)
        sharded = [p for p, _, sh in seen["params"]
                   if isinstance(sh, NamedSharding) and not sh.is_fully_replicated]
        replicated = [(p, s) for p, s, sh in seen["params"] if sh.is_fully_replicated]
        total = sum(int(np.prod(s)) for _, s, _ in seen["params"])
        out[name] = {"ppl": ppl, "gen": gen, "params": len(seen["params"]),
                     "sharded": len(sharded), "replicated": sorted(p for p, _ in replicated),
                     "replicated_fraction": sum(int(np.prod(s)) for _, s in replicated) / total}
    print(json.dumps(out))


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        main(sys.argv[1] if len(sys.argv) > 1 else tmp)
