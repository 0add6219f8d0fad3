"""notebooks/quickstart.ipynb runs top to bottom headless (nbclient), at a few training steps, and
leaves what it promises: a loss plot, the evaluation table, eval.json and a caption grid."""

import json
import math
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MM1_NOTEBOOK_STEPS", "12")
    monkeypatch.setenv("MM1_NOTEBOOK_EVAL_LIMIT", "16")
    monkeypatch.setenv("MM1_NOTEBOOK_WORKDIR", str(tmp_path / "wd"))
    monkeypatch.setenv("MM1_NOTEBOOK_DATA", str(tmp_path / "demo_data"))
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = {i: c.get("outputs", []) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    images = [i for i, outs in outputs.items() if any("image/png" in o.get("data", {}) for o in outs)]
    assert len(images) == 2  # the loss curve and the caption grid
    text = "".join(o.get("text", "") for outs in outputs.values() for o in outs)
    assert "trained to step 12" in text and "| zero-shot digit captioning accuracy |" in text
    results = json.load(open(tmp_path / "wd" / "eval.json"))
    assert results["step"] == 12 and results["demo/named_chance"] == 0.5
    rows = [json.loads(line) for line in open(tmp_path / "wd" / "metrics.jsonl")]
    # it trained: below the loss of a uniform guess over the 1,030 tokens (6.94 nats)
    assert rows[-1]["step"] == 12 and rows[-1]["loss/total"] < math.log(1030) - 0.5
