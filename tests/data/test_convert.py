"""Converters on inputs built here (real tar files, real parquet), with every bad case planted."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mm1_jax.data import records
from mm1_jax.data.convert.__main__ import main as convert_main
from tests.data import factories as F


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _read(out, kind, name):
    paths = sorted(p for p in records.shard_paths(str(out), kind)
                   if os.path.basename(p).startswith(name + "-"))
    return paths, {r.id: r for r in records.read_records(paths)}


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int32)


# ------------------------------------------------------------------------------ webdataset

VALID_WDS = {
    "k00": ("jpg", F.jpeg(seed=0), "a red gradient", None),
    "k01": ("png", F.png(seed=1), None, {"caption": "caption from json", "url": "http://x/1"}),
    "k02": ("webp", F.webp(seed=2), "txt wins", {"caption": "json loses"}),
    "k03": ("jpg", F.cmyk_jpeg(), "cmyk", None),
    "k04": ("png", F.palette_png(), "palette", None),
    "k05": ("png", F.rgba_png(), "alpha", None),
    "k06": ("png", F.png16(), "sixteen bit", None),
    "k07": ("jpg", F.gray_jpeg(), "grayscale stays as it is", None),
}
BAD_WDS = {  # key: (files, expected reason)
    "k08": ({"jpg": F.corrupt(), "txt": b"corrupt"}, "corrupt_image"),
    "k09": ({"jpg": F.truncated_jpeg(), "txt": b"truncated"}, "corrupt_image"),
    "k10": ({"png": F.png(4, 4), "txt": b"tiny"}, "absurd_size"),
    "k11": ({"png": F.png(400, 10), "txt": b"a strip"}, "absurd_size"),
    "k12": ({"jpg": F.jpeg(), "txt": b"   \n"}, "empty_text"),
    "k13": ({"jpg": F.jpeg()}, "missing_caption"),
    "k14": ({"txt": b"no image here"}, "missing_image"),
    "k15": ({"jpg": F.jpeg(), "json": b"{not json"}, "bad_json"),
    "k16": ({"jpg": F.jpeg(), "json": json.dumps({"url": "u"}).encode()}, "missing_caption"),
}


def _webdataset_inputs(d):
    with tarfile.open(d / "00000.tar", "w") as tar:
        for key, (ext, img, txt, meta) in VALID_WDS.items():
            _add(tar, f"{key}.{ext}", img)
            if txt is not None:
                _add(tar, f"{key}.txt", txt.encode())
            if meta is not None:
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        for key, (files, _) in BAD_WDS.items():
            for ext, data in files.items():
                _add(tar, f"{key}.{ext}", data)
    # a second shard cut off inside its third sample's image: two samples survive
    with tarfile.open(d / "00001.tar", "w") as tar:
        for i in range(3):
            _add(tar, f"t{i}.jpg", F.jpeg(128, 128, seed=10 + i))
            _add(tar, f"t{i}.txt", f"survivor {i}".encode())
    data = (d / "00001.tar").read_bytes()
    offset = data.index(b"t2.jpg") + 512 + 300  # header block, then part of the image
    (d / "00001.tar").write_bytes(data[:offset])


def test_webdataset_counts_every_planted_case(tmp_path):
    _webdataset_inputs(tmp_path)
    out = tmp_path / "corpus"
    s = convert_main(["webdataset", f"--input={tmp_path}/*.tar", f"--output={out}",
                      "--num_shards=3"])
    expected = {}
    for _, reason in BAD_WDS.values():
        expected[reason] = expected.get(reason, 0) + 1
    expected["corrupt_tar"] = 1
    assert s["skipped"] == expected
    assert s["images_converted"] == {"JPEG/CMYK": 1, "PNG/I;16": 1, "PNG/P": 1, "PNG/RGBA": 1}
    n_valid = len(VALID_WDS) + 2
    assert s["records_written"] == n_valid
    # round-robin in input order: shard i holds records i, i+3, ...
    assert list(s["records_per_shard"].values()) == [4, 3, 3]
    with open(out / "caption" / "webdataset.summary.json") as f:
        assert json.load(f) == s

    paths, recs = _read(out, "caption", "webdataset")
    assert set(recs) == set(VALID_WDS) | {"t0", "t1"}
    assert recs["k01"].texts == ["caption from json"] and recs["k01"].source == "http://x/1"
    assert recs["k02"].texts == ["txt wins"]
    for key in ("k00", "k01", "k02", "k07"):  # usable as they are: the original bytes are kept
        assert recs[key].segments[0]["image"] == VALID_WDS[key][1]
    assert recs["k07"].segments[0]["format"] == "jpeg"
    px = {k: _pixels(recs[k].segments[0]["image"]) for k in ("k03", "k04", "k05", "k06")}
    assert np.abs(px["k03"] - [255, 0, 0]).max() <= 3  # CMYK (0,255,255,0) is red
    pal = np.asarray(Image.open(io.BytesIO(VALID_WDS["k04"][1])).convert("RGB"), np.int32)
    np.testing.assert_array_equal(px["k04"], pal)
    # 200 red at alpha 128 over white: 200*128/255 + 255*127/255
    np.testing.assert_array_equal(px["k05"][0, 0], [227, 127, 127])
    np.testing.assert_array_equal(px["k06"][0, :4, 0], [0, 128, 255, 4])  # 16 bit scaled to 8
    assert recs["t1"].texts == ["survivor 1"]


def test_rerun_gives_identical_shards(tmp_path):
    _webdataset_inputs(tmp_path)
    args = ["webdataset", f"--input={tmp_path}/*.tar", "--num_shards=2"]
    convert_main(args + [f"--output={tmp_path}/a"])
    convert_main(args + [f"--output={tmp_path}/b", "--workers=2"])
    a, _ = _read(tmp_path / "a", "caption", "webdataset")
    b, _ = _read(tmp_path / "b", "caption", "webdataset")
    assert len(a) == 2
    for pa_, pb in zip(a, b):
        assert open(pa_, "rb").read() == open(pb, "rb").read()


# --------------------------------------------------------------------------------- obelics


def test_obelics_parquet(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.png").write_bytes(F.png(seed=3))
    img = F.jpeg(seed=4)
    rows = [  # (texts, images, what the converter must do)
        (["Hello", None, "world"], [None, img, None]),  # d0 valid
        (["struct image", None], [None, {"bytes": F.png(seed=5), "path": None}]),  # d1 valid
        ([None, "relative path"], ["a.png", None]),  # d2 valid
        (["keeps its text", None, "and this"], [None, F.corrupt(), None]),  # d3 loses its image
        (["missing file", None], [None, "nope.png"]),  # d4 loses its image
        (["a", "b"], [None]),  # d5 misaligned lengths
        (["x", None], [None, None]),  # d6 a position with neither
        ([None, None], [img, img]),  # d7 images only: no text
        (["  ", None], [None, img]),  # d8 blank text only
        (["cmyk", None], [None, F.cmyk_jpeg()]),  # d9 converted
        (["url", None], [None, "https://example.com/x.jpg"]),  # d10 not downloaded: removed
    ]
    # images as a string/bytes/struct union does not fit one arrow type: one file per type
    groups = {"bytes": [], "struct": [], "str": []}
    for i, (t, im) in enumerate(rows):
        kinds = {type(x).__name__ for x in im if x is not None}
        g = "struct" if "dict" in kinds else "str" if "str" in kinds else "bytes"
        groups[g].append({"id": f"d{i}", "texts": t, "images": im})
    for g, docs in groups.items():
        pq.write_table(pa.Table.from_pylist(docs), tmp_path / f"{g}.parquet")
    (tmp_path / "zz_broken.parquet").write_bytes(b"PAR1 this is not parquet")

    s = convert_main(["obelics", f"--input={tmp_path}/*.parquet", f"--output={tmp_path}/out",
                      f"--image_root={root}", "--num_shards=2"])
    assert s["skipped"] == {"corrupt_file": 1, "empty_text": 2, "misaligned": 2}
    assert s["images_removed_from_kept_items"] == {"corrupt_image": 1, "image_url_not_downloaded": 1,
                                                   "missing_file": 1}
    assert s["images_converted"] == {"JPEG/CMYK": 1}
    _, recs = _read(tmp_path / "out", "interleaved", "obelics")
    assert set(recs) == {"d0", "d1", "d2", "d3", "d4", "d9", "d10"}
    d0 = recs["d0"].segments
    assert [("text" in s_) for s_ in d0] == [True, False, True]
    assert d0[0]["text"] == "Hello" and d0[1]["image"] == img and d0[2]["text"] == "world"
    assert recs["d2"].segments[0]["image"] == (root / "a.png").read_bytes()
    assert recs["d3"].texts == ["keeps its text", "and this"] and recs["d3"].num_images == 0


# ------------------------------------------------------------------------ text, image folder


def test_text_jsonl_and_parquet(tmp_path):
    lines = [json.dumps({"text": "first document", "id": "a"}), "{broken", json.dumps([1, 2]),
             json.dumps({"body": "wrong field"}), json.dumps({"text": ""}),
             json.dumps({"text": "second\n\ndocument"}), ""]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.Table.from_pylist([{"text": "from parquet"}, {"text": None}]),
                   tmp_path / "d.parquet")
    s = convert_main(["text", f"--input={tmp_path}/c.jsonl,{tmp_path}/d.parquet",
                      f"--output={tmp_path}/out", "--num_shards=1"])
    assert s["skipped"] == {"bad_json": 2, "empty_text": 1, "missing_field": 2}
    _, recs = _read(tmp_path / "out", "text", "text")
    assert sorted(t for r in recs.values() for t in r.texts) == [
        "first document", "from parquet", "second\n\ndocument"]
    assert "a" in recs  # the id field is kept


def test_image_folder_cli(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(F.jpeg(seed=7))
    (tmp_path / "bad.jpg").write_bytes(F.truncated_jpeg())
    (tmp_path / "big.png").write_bytes(F.png(400, 300))
    entries = [{"image": "ok.jpg", "caption": "fine"}, {"image": "bad.jpg", "caption": "x"},
               {"image": "gone.jpg", "caption": "x"}, {"image": "ok.jpg"},
               {"image": "big.png", "caption": "over the pixel limit"}]
    (tmp_path / "caps.jsonl").write_text("\n".join(map(json.dumps, entries)))
    proc = subprocess.run(
        [sys.executable, "-m", "mm1_jax.data.convert", "image_folder",
         f"--input={tmp_path}/caps.jsonl", f"--output={tmp_path}/out", "--num_shards=1",
         "--name=folder", "--max_pixels=100000"],
        capture_output=True, text=True, check=True)
    s = json.loads(proc.stdout)
    assert s["skipped"] == {"absurd_size": 1, "corrupt_image": 1, "missing_field": 1,
                            "missing_file": 1}
    assert s["records_written"] == 1
    _, recs = _read(tmp_path / "out", "caption", "folder")
    assert recs["ok.jpg"].segments[0]["image"] == (tmp_path / "ok.jpg").read_bytes()
    assert recs["ok.jpg"].texts == ["fine"]


def test_record_errors_name_the_place(tmp_path):
    with pytest.raises(records.RecordError, match=r"shard-x record 3.*msgpack"):
        records.decode(b"\xc1 not msgpack", where="shard-x record 3")
    bad = records.Record("text", "t", "s", [records.image_segment(F.png(), "png", 64, 48)])
    with pytest.raises(records.RecordError, match="text record holds no images"):
        records.encode(bad)
