"""The evaluation harness: captioning (CIDEr), VQA (VQA accuracy) at 0/4/8 shots, text perplexity,
and the demo metrics, for a model in memory (`run_eval`, what the trainer calls every K steps) or a
checkpoint (`load_model`, used by `python -m mm1_jax.eval`).

Metric names: `<caption_name>/cider_<k>shot`, `<vqa_name>/accuracy_<k>shot` (a fraction; MM1's
tables show percentages), `text/ppl`, and the demo's `demo/*` (mm1_jax.eval.demo).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from mm1_jax.eval import fewshot, inference, metrics, prompts, readers


@dataclasses.dataclass
class EvalTasks:
    """What to evaluate. Unset paths skip their task."""

    caption_annotations: str | None = None  # COCO-format captions JSON
    caption_images: str | None = None  # folder with the images it names
    caption_name: str = "coco"
    vqa_questions: str | None = None  # VQAv2-format questions JSON
    vqa_annotations: str | None = None  # VQAv2-format annotations JSON
    vqa_images: str | None = None
    vqa_name: str = "vqav2"
    text: tuple[str, ...] = ()  # held-out text: record shards/dirs, .jsonl ("text"), plain files
    demo: bool | None = None  # the demo metrics; None = when data.dir holds a demo corpus
    shots: tuple[int, ...] = (0, 4, 8)
    support_fraction: float = 0.5  # share of images (per file) that serve as in-context examples
    limit: int | None = None  # first n examples of each file (quick runs)
    seed: int = 0
    batch_size: int = 8
    caption_max_new_tokens: int = 20
    vqa_max_new_tokens: int = 10

    def __post_init__(self):
        if bool(self.caption_annotations) != bool(self.caption_images):
            raise ValueError("captioning needs both caption_annotations (--captions) and "
                             "caption_images (--caption_images)")
        vqa = (self.vqa_questions, self.vqa_annotations, self.vqa_images)
        if any(vqa) and not all(vqa):
            raise ValueError("VQA needs vqa_questions, vqa_annotations and vqa_images "
                             "(--vqa_questions, --vqa_annotations, --vqa_images)")
        if any(k < 0 for k in self.shots):
            raise ValueError(f"shots {self.shots} must be >= 0")


def _split(examples, tasks: EvalTasks):
    return fewshot.split_for_shots(examples, lambda e: e.image_id, tasks.shots,
                                   tasks.support_fraction, tasks.seed)


def _continuations(model, cfg, tok, segments: list[list[dict]], max_new_tokens: int,
                   tasks: EvalTasks) -> list[str]:
    """Greedy continuations of prompts given as segments, cut where a new example would start."""
    t = cfg.model.connector.num_tokens
    items = [inference.PromptItem(*prompts.tokenize(s, tok, t)) for s in segments]
    texts = inference.generate_texts(model, tok, items, readers.image_loader(cfg),
                                     max_new_tokens=max_new_tokens, batch_size=tasks.batch_size,
                                     image_size=cfg.model.vision.image_size)
    return [prompts.clean_answer(x) for x in texts]


def evaluate_captions(model, cfg, tok, examples: list[readers.CaptionExample],
                      tasks: EvalTasks) -> dict[str, float]:
    """CIDEr of generated captions (what follows "A photo of") at each shot count, on the query
    part of `examples`."""
    support, query = _split(examples, tasks)
    out = {}
    for k in tasks.shots:
        texts = _continuations(model, cfg, tok,
                               [fewshot.caption_prompt(support, q, k, tasks.seed) for q in query],
                               tasks.caption_max_new_tokens, tasks)
        score, _ = metrics.cider({q.image_id: x for q, x in zip(query, texts)},
                                 {q.image_id: q.references for q in query})
        out[f"{tasks.caption_name}/cider_{k}shot"] = score
    return out


def evaluate_vqa(model, cfg, tok, examples: list[readers.VQAExample],
                 tasks: EvalTasks) -> dict[str, float]:
    """VQA accuracy of generated short answers at each shot count, on the query part."""
    support, query = _split(examples, tasks)
    out = {}
    for k in tasks.shots:
        texts = _continuations(model, cfg, tok,
                               [fewshot.vqa_prompt(support, q, k, tasks.seed) for q in query],
                               tasks.vqa_max_new_tokens, tasks)
        acc, _ = metrics.vqa_accuracy({q.question_id: x for q, x in zip(query, texts)},
                                      {q.question_id: q.answers for q in query})
        out[f"{tasks.vqa_name}/accuracy_{k}shot"] = acc
    return out


def evaluate_text(model, cfg, tok, paths: tuple[str, ...], tasks: EvalTasks) -> dict[str, float]:
    """`text/ppl`: perplexity of held-out text, each document cut to train.seq_len tokens."""
    from mm1_jax.data.tokenizer import corpus_texts

    texts = [t for t in corpus_texts(list(paths)) if t.strip()][:tasks.limit]
    docs = [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in texts]  # as examples.layout
    ppl, _ = inference.text_perplexity(model, docs, batch_size=tasks.batch_size,
                                       seq_len=cfg.train.seq_len, pad_id=tok.pad_id,
                                       image_size=cfg.model.vision.image_size)
    return {"text/ppl": ppl}


def _is_demo_corpus(cfg) -> bool:
    return bool(cfg.data.dir) and os.path.exists(os.path.join(cfg.data.dir, "heldout.json"))


def run_eval(model, cfg, tasks: EvalTasks | None = None) -> dict[str, float]:
    """Every task of `tasks` (default: the demo metrics when cfg.data.dir is a demo corpus) for
    `model`; returns {metric name: value}. Pure apart from reading files: the caller logs."""
    from mm1_jax.data.tokenizer import Tokenizer

    tasks = tasks or EvalTasks()
    if not cfg.data.tokenizer:
        raise ValueError("config.data.tokenizer is not set; evaluation encodes prompts with the "
                         "model's tokenizer")
    tok = Tokenizer(cfg.data.tokenizer)
    out: dict[str, float] = {}
    if tasks.caption_annotations:
        ex = readers.load_coco_captions(tasks.caption_annotations, tasks.caption_images, tasks.limit)
        out.update(evaluate_captions(model, cfg, tok, ex, tasks))
    if tasks.vqa_questions:
        ex = readers.load_vqa(tasks.vqa_questions, tasks.vqa_annotations, tasks.vqa_images,
                              tasks.limit)
        out.update(evaluate_vqa(model, cfg, tok, ex, tasks))
    if tasks.text:
        out.update(evaluate_text(model, cfg, tok, tasks.text, tasks))
    if tasks.demo or (tasks.demo is None and _is_demo_corpus(cfg)):
        from mm1_jax.eval.demo import evaluate_demo

        out.update(evaluate_demo(model, cfg, cfg.data.dir, batch_size=max(tasks.batch_size, 32),
                                 limit=tasks.limit))
    if not out:
        raise ValueError("nothing to evaluate: give captions, VQA files or text (see "
                         "`python -m mm1_jax.eval --help`), or a config whose data.dir is a demo "
                         "corpus")
    return out


# ------------------------------------------------------------------------------ results, models


def write_results(workdir: str, step: int, results: dict[str, float], *,
                  tensorboard: bool = True) -> str:
    """Writes `<workdir>/eval.json` ({"step": step, metric: value, ...}) and, with `tensorboard`,
    the metrics as scalars at `step` in `<workdir>/tensorboard` (the trainer's event-file writer,
    beside the training curves; a trainer logging them through its own MetricsWriter passes
    False). Returns the JSON path."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "eval.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"step": int(step), **{k: float(v) for k, v in sorted(results.items())}}, f,
                  indent=1)
    os.replace(path + ".tmp", path)
    if not tensorboard:
        return path
    tb = EventFileWriter(os.path.join(workdir, "tensorboard"), filename_suffix=".eval")
    for tag, value in sorted(results.items()):
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                       simple_value=float(value))])
        tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    tb.close()
    return path


def load_model(cfg, workdir: str, step: int | None = None, devices=None):
    """(model, step, cfg) from `<workdir>/checkpoints` (the newest complete one, or `step`), placed
    on `devices` (default all) in the shardings training uses; the returned cfg has the
    tokenizer's ids resolved (as training resolves them).

    Only the parameters are read: the optimiser settings of `cfg` (lr_mult, freezing) need not
    match the run's, and no optimiser state is allocated."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from mm1_jax.train import mesh as mesh_lib
    from mm1_jax.train.loop import prepare_config
    from mm1_jax.train.state import abstract_train_state

    cfg = prepare_config(cfg)
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} does not exist; pass the --workdir a training run "
                                "wrote (python -m mm1_jax.train --workdir=...)")
    abstract, _ = abstract_train_state(cfg, mesh_lib.make_mesh(cfg, devices))
    with ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(create=False)) as manager:
        available = sorted(manager.all_steps())
        step = manager.latest_step() if step is None else step
        if step is None or step not in available:
            raise FileNotFoundError(f"no complete checkpoint {'' if step is None else step} in "
                                    f"{directory} (steps there: {available})")
        item = {"params": abstract.params}
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True)))
    return nnx.merge(abstract.recipe.graphdef, restored["state"]["params"]), int(step), cfg
