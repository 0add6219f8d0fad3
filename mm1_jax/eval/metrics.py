"""Scores: CIDEr (COCO caption evaluation, pycocoevalcap) and VQA accuracy (the VQA challenge's).

CIDEr is pycocoevalcap's own `Cider` (CIDEr-D as COCO reports it, n = 4, sigma = 6) over captions
tokenised by pycocoevalcap's `PTBTokenizer`, the Stanford CoreNLP tokenizer that needs Java. Without
a `java` on PATH, `ptb_tokenize` falls back to `simple_ptb_tokenize`, a regex tokenizer that
lower-cases, splits off punctuation and drops the same punctuation tokens as the PTB wrapper does;
on plain captions it gives the same tokens (tests/eval/test_metrics.py), on unusual text (URLs,
abbreviations with periods) it can differ, so scores are then close to, not equal to, COCO's.

VQA accuracy follows the challenge's evaluation script (vqaEval.py) and its documented answer
processing: lower-case, punctuation rules, number words to digits, articles dropped, missing
contraction apostrophes restored; a prediction scores min(#humans that said it / 3, 1), averaged
over the 10 leave-one-out subsets of 9 human answers. The one departure: the script skips
normalisation when all human answers are identical strings; we normalise always, as the
challenge's web page describes (so "Yes." scores 1 against ten "yes" here, 0 in the script).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence

# ---------------------------------------------------------------------------------- CIDEr

# Tokens pycocoevalcap's PTBTokenizer wrapper removes after tokenising (tokenizer/ptbtokenizer.py).
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?",
                             "!", ",", ":", "-", "--", "...", ";"])
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
# Clitics PTB splits off a word: don't -> do n't, it's -> it 's, we'll -> we 'll.
_CLITIC = re.compile(r"(?i)(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_SPLIT = re.compile(r"\.\.\.|--|n't|'[a-z]+|\w+(?:[-.,]\w+)*|[^\w\s]")


def java_available() -> bool:
    return shutil.which("java") is not None


def simple_ptb_tokenize(text: str) -> str:
    """A Java-free approximation of `PTBTokenizer -preserveLines -lowerCase` plus the wrapper's
    punctuation removal: one lower-cased, space-joined line."""
    text = _CLITIC.sub(r"\1 \2", text.replace("\n", " ").lower())
    out = []
    for tok in _SPLIT.findall(text):
        # PTB turns '"' into `` or '' (both dropped) and, lower-cased, brackets into -lrb- etc.,
        # which the wrapper's case-sensitive list ("-LRB-") keeps
        tok = _BRACKETS.get(tok, "''" if tok == '"' else tok)
        if tok not in PTB_PUNCTUATION:
            out.append(tok)
    return " ".join(out)


def ptb_tokenize(captions: Mapping[object, Sequence[str]], use_java: bool | None = None
                 ) -> dict[object, list[str]]:
    """{id: [caption, ...]} -> {id: [tokenised caption, ...]}, as COCO's evaluation tokenises.

    use_java: None = Stanford PTBTokenizer when `java` is on PATH, else `simple_ptb_tokenize`.
    """
    if use_java is None:
        use_java = java_available()
    if not use_java:
        return {k: [simple_ptb_tokenize(c) for c in caps] for k, caps in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The wrapper writes one sentence per line and maps lines back in order: an empty caption
    # would still be a line, but a caption with a line break would be two.
    return PTBTokenizer().tokenize({k: [{"caption": c.replace("\n", " ") or " "} for c in caps]
                                    for k, caps in captions.items()})


def cider(predictions: Mapping[object, str], references: Mapping[object, Sequence[str]],
          use_java: bool | None = None) -> tuple[float, dict[object, float]]:
    """Corpus CIDEr-D of one prediction per id against its references (pycocoevalcap's Cider).

    Returns (corpus score, per-id scores). Document frequencies come from the references of the
    ids given, so the score of a set is not the mean of the scores of its parts.
    """
    missing = set(references) - set(predictions)
    extra = set(predictions) - set(references)
    if missing or extra:
        raise ValueError(f"cider: predictions and references must cover the same ids; "
                         f"{len(missing)} ids have no prediction (e.g. {sorted(map(str, missing))[:3]}) "
                         f"and {len(extra)} have no references (e.g. {sorted(map(str, extra))[:3]})")
    if not references:
        raise ValueError("cider: no captions to score")
    empty = [k for k, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"cider: ids {empty[:3]} have no reference captions; drop them or add "
                         "their annotations")
    from pycocoevalcap.cider.cider import Cider

    ids = list(references)
    gts = ptb_tokenize({k: list(references[k]) for k in ids}, use_java)
    res = ptb_tokenize({k: [predictions[k]] for k in ids}, use_java)
    score, per_id = Cider().compute_score(gts, res)
    return float(score), {k: float(s) for k, s in zip(gts.keys(), per_id)}


# ---------------------------------------------------------------------------------- VQA

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(["a", "an", "the"])
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!"]
# As in vqaEval.py: `(?!<=\d)` is a look-ahead (not a look-behind), so this removes every period
# that is not followed by a digit ("5." -> "5", "1.5" stays).
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        # glued punctuation ("ice-cream") becomes a space; punctuation next to a space, or any
        # punctuation in a text with a digit-grouping comma ("1,000"), is deleted
        if (p + " " in text or " " + p in text) or _COMMA_IN_NUMBER.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # vqaEval passes re.UNICODE (32) as sub's `count`: at most 32 periods go
    return _PERIOD.sub("", out, count=32)


def _digits_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """The VQA challenge's answer processing (see the module docstring)."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(answer))


def vqa_accuracy_one(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction: mean over leave-one-out subsets of min(#matches / 3, 1)."""
    if not human_answers:
        raise ValueError("vqa_accuracy: a question has no human answers")
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in human_answers]
    matches = sum(g == pred for g in gts)
    # Leaving out answer i removes one match exactly when answer i itself matches.
    return sum(min((matches - (g == pred)) / 3.0, 1.0) for g in gts) / len(gts)


def vqa_accuracy(predictions: Mapping[object, str],
                 answers: Mapping[object, Sequence[str]]) -> tuple[float, dict[object, float]]:
    """(mean accuracy over questions, per-question accuracy); both keyed by question id."""
    missing = set(answers) - set(predictions)
    if missing:
        raise ValueError(f"vqa_accuracy: {len(missing)} questions have no prediction "
                         f"(e.g. {sorted(map(str, missing))[:3]})")
    if not answers:
        raise ValueError("vqa_accuracy: no questions to score")
    per_q = {q: vqa_accuracy_one(predictions[q], answers[q]) for q in answers}
    return sum(per_q.values()) / len(per_q), per_q
