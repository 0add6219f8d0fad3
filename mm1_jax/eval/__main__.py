"""`python -m mm1_jax.eval --config=experiments/<x>.py --workdir=DIR [--checkpoint=STEP] [tasks]`

Evaluates the newest complete checkpoint of DIR (or STEP) and writes DIR/eval.json plus
TensorBoard scalars. With no task flags, a config whose data.dir is the demo corpus gets the demo
metrics. Real benchmarks:

    --captions=captions_val2014.json --caption_images=val2014/
    --vqa_questions=v2_OpenEnded_mscoco_val2014_questions.json
    --vqa_annotations=v2_mscoco_val2014_annotations.json --vqa_images=val2014/
    --text=heldout.jsonl  --shots=0,4,8  --limit=500
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step to evaluate (default: newest).")
_CAPTIONS = flags.DEFINE_string("captions", None, "COCO-format captions JSON.")
_CAPTION_IMAGES = flags.DEFINE_string("caption_images", None, "Folder of the captions' images.")
_CAPTION_NAME = flags.DEFINE_string("caption_name", "coco", "Metric prefix for captioning.")
_VQA_Q = flags.DEFINE_string("vqa_questions", None, "VQAv2-format questions JSON.")
_VQA_A = flags.DEFINE_string("vqa_annotations", None, "VQAv2-format annotations JSON.")
_VQA_IMAGES = flags.DEFINE_string("vqa_images", None, "Folder of the questions' images.")
_VQA_NAME = flags.DEFINE_string("vqa_name", "vqav2", "Metric prefix for VQA.")
_TEXT = flags.DEFINE_list("text", [], "Held-out text: record shards/dirs, .jsonl, text files.")
_DEMO = flags.DEFINE_enum("demo", "auto", ["auto", "yes", "no"],
                          "Demo metrics: auto = when config data.dir is a demo corpus.")
_SHOTS = flags.DEFINE_list("shots", ["0", "4", "8"], "Shot counts for captioning and VQA.")
_SUPPORT = flags.DEFINE_float("support_fraction", 0.5, "Share of images used as in-context examples.")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate the first N examples of each file.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts per generation batch.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from mm1_jax.eval.harness import EvalTasks, load_model, run_eval, write_results

    try:
        tasks = EvalTasks(
            caption_annotations=_CAPTIONS.value, caption_images=_CAPTION_IMAGES.value,
            caption_name=_CAPTION_NAME.value, vqa_questions=_VQA_Q.value,
            vqa_annotations=_VQA_A.value, vqa_images=_VQA_IMAGES.value, vqa_name=_VQA_NAME.value,
            text=tuple(_TEXT.value), demo={"auto": None, "yes": True, "no": False}[_DEMO.value],
            shots=tuple(int(k) for k in _SHOTS.value), support_fraction=_SUPPORT.value,
            limit=_LIMIT.value, batch_size=_BATCH.value)
        model, step, cfg = load_model(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value)
        results = run_eval(model, cfg, tasks)
    except (ValueError, FileNotFoundError) as e:  # ConfigError, EvalDataError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    path = write_results(_WORKDIR.value, step, results)
    width = max(map(len, results))
    for name, value in sorted(results.items()):
        print(f"{name.ljust(width)}  {value:.4f}")
    print(f"step {step}; written to {path}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
