"""`python -m mm1_jax.summary --config=experiments/x.py [--json]`: sizes, eta(N) and FLOPs of a
config, without allocating anything (the definitions: mm1_jax/models/stats.py)."""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from mm1_jax.config import validate
from mm1_jax.errors import cli
from mm1_jax.models.stats import ModelStats
from mm1_jax.startup import abstract_model
from mm1_jax.data.synthetic import SPECIAL



def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return f"{n:.0f}"


def format_table(name: str, s: ModelStats) -> str:
    rows = [("vision encoder", s.vision), ("connector", s.connector), ("decoder", s.decoder),
            ("  of which embedding + head", s.embedding), ("total", s.total),
            ("non-embedding", s.non_embedding), ("active per token", s.active),
            ("N for eta (dense backbone)", s.lr_params)]
    lines = [f"config: {name}"]
    lines += [f"  {label:<28} {_human(v):>10}  ({v:,})" for label, v in rows]
    lines.append(f"  {'peak lr eta(N)':<28} {s.peak_lr:.3e}   weight decay {0.1 * s.peak_lr:.3e}")
    lines.append(f"  {'image tokens per image':<28} {s.image_tokens_per_image}")
    lines.append(f"  {'train FLOPs / token':<28} {_human(s.flops_per_token)}")
    if s.flops_per_image is not None:
        lines.append(f"  {'train FLOPs / image':<28} {_human(s.flops_per_image)}")
    return "\n".join(lines)


def main(argv):
    del argv
    cfg = validate(flags.FLAGS.config)
    # Which token ids are special changes no size or FLOP count: no tokenizer is needed.
    stats = abstract_model(cfg, SPECIAL).stats
    print(json.dumps(stats.as_dict()) if flags.FLAGS.json else format_table(cfg.name, stats))


if __name__ == "__main__":
    # Flags are defined here, not at import, so programs with their own flags can import this.
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
    flags.mark_flag_as_required("config")
    app.run(cli(main))
