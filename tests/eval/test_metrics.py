"""CIDEr against pycocoevalcap and an independent CIDEr-D computation; VQA accuracy against
hand-computed values of the challenge's answer processing and leave-one-out averaging."""

import math
from collections import Counter

import numpy as np
import pytest

from mm1_jax.eval import metrics

REFS = {
    "a": ["A man rides a wave on a surfboard.", "A surfer riding a big wave.",
          "Man surfing in the ocean."],
    "b": ["Two dogs play with a red ball.", "A couple of dogs playing in the grass.",
          "Dogs chase a ball on the lawn."],
    "c": ["A plate of food with broccoli.", "Broccoli and rice on a white plate."],
}
PREDS = {"a": "a man riding a wave on a surfboard", "b": "two dogs playing with a ball",
         "c": "a plate with rice"}

needs_java = pytest.mark.skipif(not metrics.java_available(), reason="java is not installed")


def _ngrams(words, n):
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1)
                   for i in range(len(words) - k + 1))


def cider_d_reference(preds, refs, n=4, sigma=6.0):
    """CIDEr-D written from the paper's definition (Vedantam et al. 2015, as COCO computes it):
    tf-idf n-gram vectors, idf = log(#images / #images whose references hold the n-gram), the
    candidate's weights clipped at the reference's, a Gaussian length penalty, x10, averaged
    over n = 1..4 and over references."""
    ids = list(refs)
    df = Counter(g for i in ids for g in {g for r in refs[i] for g in _ngrams(r.split(), n)})
    log_n = math.log(len(ids))

    def vec(words):
        counts = _ngrams(words, n)
        return {g: c * (log_n - math.log(max(1.0, df[g]))) for g, c in counts.items()}

    scores = []
    for i in ids:
        cand = preds[i].split()
        v_c = vec(cand)
        total = np.zeros(n)
        for r in refs[i]:
            v_r = vec(r.split())
            pen = math.exp(-((len(cand) - len(r.split())) ** 2) / (2 * sigma ** 2))
            for k in range(1, n + 1):
                gc = {g: w for g, w in v_c.items() if len(g) == k}
                gr = {g: w for g, w in v_r.items() if len(g) == k}
                num = sum(min(w, gr.get(g, 0.0)) * gr.get(g, 0.0) for g, w in gc.items())
                den = math.sqrt(sum(w * w for w in gc.values())) * math.sqrt(sum(w * w for w in gr.values()))
                total[k - 1] += (num / den if den else 0.0) * pen
        scores.append(10.0 * total.mean() / len(refs[i]))
    return float(np.mean(scores)), scores


def test_cider_matches_independent_cider_d():
    refs = {k: [metrics.simple_ptb_tokenize(r) for r in v] for k, v in REFS.items()}
    score, per_id = metrics.cider(PREDS, REFS, use_java=False)
    expected, expected_per_id = cider_d_reference(PREDS, refs)
    assert score == pytest.approx(expected, rel=1e-9)
    assert [per_id[k] for k in REFS] == pytest.approx(expected_per_id, rel=1e-9)
    assert 0.3 < score < 3.0  # a real, non-degenerate score


@needs_java
def test_cider_equals_pycocoevalcap_with_ptb_tokenizer():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # COCOEvalCap's own recipe: PTB-tokenise references and results, then Cider.
    gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = PTBTokenizer().tokenize({k: [{"caption": PREDS[k]}] for k in REFS})
    expected, _ = Cider().compute_score(gts, res)
    score, _ = metrics.cider(PREDS, REFS, use_java=True)
    assert score == pytest.approx(float(expected), rel=1e-12)


@needs_java
def test_fallback_tokenizer_matches_stanford_ptb_on_plain_captions():
    caps = ["A man riding a wave on top of a surfboard.", "Two dogs don't play, it's the cat's toy!",
            "A red-and-white bus (double-decker) on a street...", "We'll see: I'm here -- now",
            'The number 3.5 is 1,000 times "larger"; ok?', "Kids' toys: a ball and a bat."]
    java = metrics.ptb_tokenize({0: caps}, use_java=True)[0]
    assert java == [metrics.simple_ptb_tokenize(c) for c in caps]


def test_cider_requires_the_same_ids():
    with pytest.raises(ValueError, match="1 ids have no prediction"):
        metrics.cider({"a": "x"}, {"a": ["x"], "b": ["y"]}, use_java=False)


@pytest.mark.parametrize("raw, normalised", [
    ("Yes.", "yes"),
    ("A Dog", "dog"),
    ("the red-car", "red car"),  # glued punctuation becomes a space
    ("ice - cream", "ice cream"),  # punctuation beside a space is removed
    ("1,000", "1000"),  # a digit-grouping comma removes the punctuation
    ("3.5", "3.5"),  # a period before a digit stays
    ("two dogs", "2 dogs"),
    ("None", "0"),
    ("dont know", "don't know"),
    ("It's an apple!", "it's apple"),
    ("  left\n", "left"),
])
def test_vqa_answer_normalisation(raw, normalised):
    assert metrics.normalize_vqa_answer(raw) == normalised


def test_vqa_accuracy_leave_one_out_values():
    yes_no = ["yes"] * 2 + ["no"] * 8
    # 2 matches: the 2 subsets without a "yes" see 1 match (1/3), the 8 others see 2 (2/3)
    assert metrics.vqa_accuracy_one("yes", yes_no) == pytest.approx((2 / 3 + 16 / 3) / 10)
    three = ["red"] * 3 + ["blue"] * 7
    assert metrics.vqa_accuracy_one("Red.", three) == pytest.approx((3 * 2 / 3 + 7) / 10)
    four = ["2"] * 2 + ["two"] * 2 + ["3"] * 6
    assert metrics.vqa_accuracy_one("two", four) == 1.0  # 4 matches after number words
    assert metrics.vqa_accuracy_one("green", three) == 0.0
    one = ["cat"] + ["dog"] * 9
    assert metrics.vqa_accuracy_one("the cat", one) == pytest.approx(9 * (1 / 3) / 10)


def test_vqa_accuracy_mean_and_errors():
    acc, per_q = metrics.vqa_accuracy({1: "yes", 2: "blue"},
                                      {1: ["yes"] * 10, 2: ["red"] * 3 + ["blue"] * 7})
    assert per_q == {1: 1.0, 2: 1.0}
    acc, _ = metrics.vqa_accuracy({1: "no", 2: "red"},
                                  {1: ["yes"] * 10, 2: ["red"] * 3 + ["blue"] * 7})
    assert acc == pytest.approx((0.0 + 0.9) / 2)
    with pytest.raises(ValueError, match="1 questions have no prediction"):
        metrics.vqa_accuracy({}, {1: ["yes"]})
