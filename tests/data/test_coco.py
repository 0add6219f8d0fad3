"""COCO captions as a converter source, on a COCO-format file built here with a missing and a
corrupt image planted; a conversion that writes nothing fails, naming the likely cause."""

import json
import os
import subprocess
import sys

import pytest

from mm1_jax.data import records
from mm1_jax.data.convert.__main__ import main as convert_main
from mm1_jax.errors import EXIT_USER_ERROR, DataError
from tests.data import factories as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def coco_files(tmp_path, n_images: int = 4, captions_per_image: int = 3) -> tuple[str, str]:
    """captions.json + images/ as COCO ships them; image 1 is missing, image 2 corrupt, and one
    annotation points at an image the file does not list."""
    images = tmp_path / "images"
    images.mkdir(parents=True)
    coco = {"info": {}, "licenses": [], "images": [], "annotations": []}
    for i in range(n_images):
        name = f"{i:012d}.jpg"
        coco["images"].append({"id": 100 + i, "file_name": name, "width": 64, "height": 48})
        if i == 2:
            (images / name).write_bytes(F.corrupt())
        elif i != 1:
            (images / name).write_bytes(F.jpeg(seed=i))
        for c in range(captions_per_image):
            coco["annotations"].append({"id": 1000 + 10 * i + c, "image_id": 100 + i,
                                        "caption": f"image {i}, caption {c}"})
    coco["annotations"].append({"id": 9999, "image_id": 7, "caption": "of no listed image"})
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(coco))
    return str(path), str(images)


def test_coco_captions_with_a_missing_and_a_corrupt_image(tmp_path, capsys):
    ann, images = coco_files(tmp_path)
    s = convert_main(["coco", f"--annotations={ann}", f"--image_root={images}",
                      f"--output={tmp_path}/out", "--num_shards=2"])
    # 4 images x 3 captions: images 0 and 3 give 6 records; 1 (missing) and 2 (corrupt) skip
    # their 3 captions each; the caption of an unlisted image is counted too.
    assert s["items_read"] == 13 and s["records_written"] == 6
    assert s["skipped"] == {"corrupt_image": 3, "missing_file": 3, "unknown_image": 1}
    assert s["skip_examples"]["missing_file"][0] == "captions.json: image 101 (000000000001.jpg)"
    recs = {r.id: r for r in records.read_records(records.shard_paths(f"{tmp_path}/out", "caption"))}
    assert sorted(recs) == [f"{100 + i}-{1000 + 10 * i + c}" for i in (0, 3) for c in range(3)]
    r = recs["103-1031"]
    assert r.texts == ["image 3, caption 1"] and r.source == "000000000003.jpg"
    assert r.segments[0]["image"] == (tmp_path / "images" / "000000000003.jpg").read_bytes()
    err = capsys.readouterr().err
    assert "item/s" in err  # the progress bar
    assert ("wrote 6 records of 13 items in 2 shards" in err and
            "skipped 7: corrupt_image 3, missing_file 3, unknown_image 1" in err), err


def test_a_coco_file_converted_as_image_folder_fails_naming_coco(tmp_path):
    """The mistake of the issue: exit 0 and 0 records before; now exit 2, one line, the fix."""
    ann, images = coco_files(tmp_path)
    run = subprocess.run([sys.executable, "-m", "mm1_jax.data.convert", "image_folder",
                          f"--input={ann}", f"--image_root={images}", f"--output={tmp_path}/out"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == EXIT_USER_ERROR and "Traceback" not in run.stderr, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last == (f"error: the image_folder conversion of {ann} wrote 0 records: {ann} is a "
                    f"COCO captions file; convert it with `python -m mm1_jax.data.convert coco "
                    f"--annotations={ann} --image_root=<its image folder> --output=...`")


def test_zero_records_name_the_commonest_reason(tmp_path):
    ann, _ = coco_files(tmp_path)
    with pytest.raises(DataError, match=r"wrote 0 records: all 13 items were skipped \(missing_file "
                       r"12, unknown_image 1; e.g\. missing_file at captions.json: image 100 .*\): "
                       r"image paths are relative to --image_root"):
        convert_main(["coco", f"--annotations={ann}", f"--image_root={tmp_path}/elsewhere",
                      f"--output={tmp_path}/out"])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"the inputs hold no items \(JSONL or parquet with a text "
                       r"field expected\)"):
        convert_main(["text", f"--input={tmp_path}/empty.jsonl", f"--output={tmp_path}/out"])
    with pytest.raises(DataError, match=r"--annotations='.*nothing\*.json' matches no files"):
        convert_main(["coco", f"--annotations={tmp_path}/nothing*.json", f"--output={tmp_path}/o"])
