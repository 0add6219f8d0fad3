"""MM1's evaluation prompts, and how a prompt becomes token ids with image placeholders.

MM1 (arXiv 2403.09611, section 3 and appendix) prompts the pre-trained model with
`{IMAGE} A photo of` for captioning and `{IMAGE} Question: {QUESTION} Short answer:` for VQA. A
k-shot prompt is k solved examples (prompt + target) followed by the query's prompt, each with its
own image, as one document.

A prompt is a list of segments in the records' layout ({"image": source} or {"text": str}) and
is tokenised the way the data pipeline tokenises a record (mm1_jax.data.examples.layout): <s>,
then each text segment encoded on its own and each image as <img> <image> x T </img>. The space
after `{IMAGE}` in MM1's templates therefore marks a segment boundary, not a character: training
documents hold "A photo of ..." as a segment of its own after the image, and a prompt must match.
"""

from __future__ import annotations

from collections.abc import Sequence

from mm1_jax.data.examples import layout_segments

CAPTION_PROMPT = "{IMAGE} A photo of"
VQA_PROMPT = "{IMAGE} Question: {QUESTION} Short answer:"
IMAGE = "{IMAGE}"


def render(template: str, image, **fields: str) -> list[dict]:
    """Segments of one filled template; `{NAME}` fields are replaced literally (a question
    holding braces stays as it is)."""
    if template.count(IMAGE) != 1:
        raise ValueError(f"prompt template {template!r} must hold exactly one {IMAGE}")
    for name, value in fields.items():
        template = template.replace("{" + name + "}", " ".join(str(value).split()))
    before, after = (part.strip() for part in template.split(IMAGE))
    segments = [{"text": before}] if before else []
    segments.append({"image": image})
    if after:
        segments.append({"text": after})
    return segments


def continuation(prompt_text: str, target: str) -> str:
    """The text a solved example appends to its prompt: " " + target, minus a repeat of the prompt
    ("A photo of a dog" after "A photo of" adds " a dog", not "A photo of A photo of a dog")."""
    target = " ".join(target.split())
    if target.lower().startswith(prompt_text.lower()):
        target = target[len(prompt_text):].lstrip()
    return " " + target


def solved(template: str, image, target: str, **fields: str) -> list[dict]:
    """Segments of one in-context example: the filled template followed by its target."""
    segments = render(template, image, **fields)
    if "text" not in segments[-1]:
        segments.append({"text": target.strip()})
    else:
        segments[-1] = {"text": segments[-1]["text"] + continuation(segments[-1]["text"], target)}
    return segments


def few_shot(template: str, shots: Sequence[tuple], query_image, **query_fields: str
             ) -> list[dict]:
    """k solved examples then the query: `shots` holds (image, target, fields dict) triples."""
    segments: list[dict] = []
    for image, target, fields in shots:
        segments += solved(template, image, target, **fields)
    return segments + render(template, query_image, **query_fields)


def tokenize(segments: Sequence[dict], tok, tokens_per_image: int) -> tuple[list[int], list]:
    """(token ids, image sources in order) of a prompt, in the data pipeline's layout; no
    end-of-sequence token, since the model continues it."""
    ids, _ = layout_segments(segments, tok, tokens_per_image, eos=False)
    return ids, [seg["image"] for seg in segments if "image" in seg]


def clean_answer(text: str, stop_strings: Sequence[str] = ("\n", "Question:")) -> str:
    """A generated continuation cut at the first stop string (the model may start a new example),
    with surrounding spaces removed."""
    for s in stop_strings:
        text = text.split(s, 1)[0]
    return text.strip()
