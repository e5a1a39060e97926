"""Property-based fuzzing of the data parsers (issue #44): the KITTI, COCO, YOLO and VOC readers, the
detections reader of ``eval --format coco`` and the image admission. For arbitrary and mutated inputs
(byte flips, truncation, random JSON values, NaN / Infinity, wrong types) the outcome is a valid result or
a UserError (DataError) with a one-line message, never another exception.

Budget: ``COMPRESSDET_FUZZ_EXAMPLES`` examples per target (default 40, what ``make test`` runs);
``make fuzz`` / ``benchmarks/fuzz.py`` run 10^5. With ``COMPRESSDET_FUZZ_COUNT_DIR`` set, each target
writes ``<target>.json`` there: ``{"examples": n, "failures": 0 | 1}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from _fuzz import FUZZ, counted  # tests/ is on sys.path
from hypothesis import given
from hypothesis import strategies as st

from compressdet.errors import UserError


def outcome(fn):
    """``fn()``'s result, or None after a UserError whose message is one non-empty line."""
    try:
        return fn()
    except UserError as e:
        msg = str(e)
        assert msg.strip() and "\n" not in msg and "\r" not in msg, repr(msg)
        return None


# ---- strategies -----------------------------------------------------------------------------------------

SPECIAL_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324])
NUMBERS = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True), SPECIAL_FLOATS)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12))
JSON_VALUES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=5),
                                                           st.dictionaries(st.text(max_size=8), kids, max_size=5)),
                           max_leaves=12)
TOKENS = st.one_of(st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-0", "", "x", "0x10",
                                    "1_000", "１", "3.5", "-1", "0", "1e-400"]),
                   NUMBERS.map(repr), st.text(max_size=6))


@st.composite
def mutated_bytes(draw, base: bytes):
    """``base`` after a few random edits: flip, overwrite, insert, delete, truncate."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


@st.composite
def mutated_json(draw, base):
    """``base`` (a JSON document) with a few values at random places replaced by arbitrary JSON values."""
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = []

        def walk(node, path):
            paths.append(path)
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, path + [k])
            elif isinstance(node, list):
                for k, v in enumerate(node):
                    walk(v, path + [k])

        walk(doc, [])
        path = draw(st.sampled_from(paths))
        value = draw(JSON_VALUES)
        if not path:
            doc = value
            continue
        node = doc
        for k in path[:-1]:
            node = node[k]
        if draw(st.booleans()) and isinstance(node, dict):
            node.pop(path[-1])
        else:
            node[path[-1]] = value
    return doc


@st.composite
def mutated_lines(draw, lines: list[str]):
    """Text lines with tokens replaced by odd numbers and strings, lines dropped or duplicated."""
    out = []
    for line in lines:
        tok = line.split()
        for _ in range(draw(st.integers(0, 3))):
            if tok:
                tok[draw(st.integers(0, len(tok) - 1))] = draw(TOKENS)
        if draw(st.integers(0, 9)) == 0 and tok:
            tok = tok[: draw(st.integers(0, len(tok)))]
        out.append(" ".join(tok))
        if draw(st.integers(0, 9)) == 0:
            out.append(draw(st.text(max_size=30)))
    return out


def text_or_lines(lines: list[str]):
    return st.one_of(mutated_lines(lines).map(lambda ls: "\n".join(ls) + "\n"),
                     st.text(max_size=200),
                     mutated_bytes("\n".join(lines).encode()).map(lambda b: b.decode("utf-8", "replace")))


def file_content(text_strategy, raw_base: bytes):
    """Text from ``text_strategy`` or raw mutated bytes (invalid UTF-8 included)."""
    return st.one_of(text_strategy.map(lambda t: t.encode("utf-8", "surrogatepass")), mutated_bytes(raw_base))


# ---- fixtures: tiny valid data sets, rewritten per example ------------------------------------------------

@pytest.fixture(scope="module")
def work():
    d = Path(tempfile.mkdtemp(prefix="compressdet-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _png(path: Path, w: int = 40, h: int = 30) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


KITTI_LINES = ["Car 0.00 0 -1.57 2.00 3.00 20.00 25.00 1.50 1.60 3.90 1.00 1.50 20.00 -1.57",
               "Pedestrian 0.10 1 0.30 5.00 5.00 9.50 29.00 1.70 0.60 0.80 -2.00 1.60 9.00 0.20",
               "DontCare -1 -1 -10 30.00 1.00 39.00 10.00 -1 -1 -1 -1000 -1000 -1000 -10"]


def _check_records(recs):
    for r in recs:
        h, w = r.size
        assert h > 0 and w > 0
        assert r.boxes.shape == (len(r.names), 4) and np.isfinite(r.boxes).all()
        assert len(r.crowd) == len(r.names)


def test_fuzz_kitti_reader(work):
    from compressdet.data.formats import read_records, source_config

    root = work / "kitti"
    _png(root / "training" / "image_2" / "000001.png")
    (root / "ImageSets").mkdir(parents=True, exist_ok=True)
    label = root / "training" / "label_2" / "000001.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    split = root / "ImageSets" / "val.txt"
    cfg = source_config("kitti", root)
    base = ("\n".join(KITTI_LINES) + "\n").encode()

    with counted("kitti_reader") as box:
        @FUZZ
        @given(lab=file_content(text_or_lines(KITTI_LINES), base),
               ids=st.one_of(st.just(b"000001\n"), mutated_bytes(b"000001\n000002\n")))
        def run(lab, ids):
            box["n"] += 1
            label.write_bytes(lab)
            split.write_bytes(ids)
            got = outcome(lambda: read_records(cfg, "val"))
            if got is not None:
                _check_records(got[0])

        run()


COCO_BASE = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                        {"id": 2, "file_name": "b.png"}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0},
                             {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0.5, 0, 39.5, 30], "iscrowd": 1,
                              "area": 1185.0}],
             "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}]}


def test_fuzz_coco_reader(work):
    from compressdet.data.formats import read_records, source_config

    root = work / "coco"
    for n in ("a", "b"):
        _png(root / "images" / f"{n}.png")
    ann = root / "annotations" / "val.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    cfg = source_config("coco", root)
    base = json.dumps(COCO_BASE).encode()

    with counted("coco_reader") as box:
        @FUZZ
        @given(doc=st.one_of(mutated_json(COCO_BASE).map(lambda d: json.dumps(d).encode()), mutated_bytes(base)))
        def run(doc):
            box["n"] += 1
            ann.write_bytes(doc)
            got = outcome(lambda: read_records(cfg, "val"))
            if got is not None:
                _check_records(got[0])

        run()


YOLO_LINES = ["0 0.5 0.5 0.2 0.2", "1 0.25 0.5 0.5 0.9"]
YOLO_YAML = "path: .\nval: images/val\nnames:\n  0: car\n  1: person\n"
YOLO_YAML_VALUES = st.one_of(TOKENS, st.sampled_from(["[]", "{}", "null", "'a\\nb'", "[images/val, x.txt]",
                                                      "x.txt", "{0: a}", "!!binary AAAA", "2001-13-45", "&a [*a]"]))


@st.composite
def mutated_yaml(draw):
    """The dataset YAML with values replaced by odd YAML scalars, lists and mappings."""
    lines = YOLO_YAML.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(0, len(lines) - 1))
        key, sep, _ = lines[k].partition(":")
        if sep:
            lines[k] = f"{key}: {draw(YOLO_YAML_VALUES)}"
    return ("\n".join(lines) + "\n").encode()


def test_fuzz_yolo_reader(work):
    from compressdet.data.formats import read_records, source_config

    root = work / "yolo"
    _png(root / "images" / "val" / "a.png", 50, 20)
    lab = root / "labels" / "val" / "a.txt"
    lab.parent.mkdir(parents=True, exist_ok=True)
    yml = root / "data.yaml"
    cfg = source_config("yolo", root)
    base = ("\n".join(YOLO_LINES) + "\n").encode()

    with counted("yolo_reader") as box:
        @FUZZ
        @given(labels=file_content(text_or_lines(YOLO_LINES), base),
               yaml_text=st.one_of(st.just(YOLO_YAML.encode()), mutated_bytes(YOLO_YAML.encode()), mutated_yaml(),
                                   mutated_lines(YOLO_YAML.splitlines()).map(lambda ls: "\n".join(ls).encode())))
        def run(labels, yaml_text):
            box["n"] += 1
            lab.write_bytes(labels)
            yml.write_bytes(yaml_text)
            got = outcome(lambda: read_records(cfg, "val"))
            if got is not None:
                _check_records(got[0])

        run()


VOC_XML = """<annotation><filename>a.png</filename><size><width>40</width><height>30</height><depth>3</depth></size>
<object><name>car</name><difficult>0</difficult><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>12</xmax><ymax>11</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object>
</annotation>
"""


@st.composite
def mutated_voc(draw):
    """VOC XML with element texts replaced by odd tokens (NaN, inf, text, empty)."""
    import re

    parts = re.split(r"(>[^<]*<)", VOC_XML)
    out = []
    for p in parts:
        if p.startswith(">") and p.endswith("<") and draw(st.integers(0, 4)) == 0:
            p = ">" + draw(TOKENS).replace("<", "").replace("&", "") + "<"
        out.append(p)
    return "".join(out).encode()


def test_fuzz_voc_reader(work):
    from compressdet.data.formats import read_records, source_config

    root = work / "voc"
    _png(root / "JPEGImages" / "a.png")
    xml = root / "Annotations" / "a.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    split = root / "ImageSets" / "Main" / "val.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    cfg = source_config("voc", root)

    with counted("voc_reader") as box:
        @FUZZ
        @given(doc=st.one_of(mutated_voc(), mutated_bytes(VOC_XML.encode())),
               ids=st.one_of(st.just(b"a\n"), mutated_bytes(b"a\n")))
        def run(doc, ids):
            box["n"] += 1
            xml.write_bytes(doc)
            split.write_bytes(ids)
            got = outcome(lambda: read_records(cfg, "val"))
            if got is not None:
                _check_records(got[0])

        run()


@pytest.mark.parametrize("name", ["0\n0", "a.png\r", "tab\there.png", "nul\x00.png", "bell\x07.png"])
def test_names_with_control_characters_stay_one_line(work, name):
    """Found by ``make fuzz`` (round 6, 300k examples in): a VOC ``<filename>`` holding a newline made the
    'annotation without an image' DataError two lines. Names read from the data are escaped in messages;
    printable non-ASCII stays as it is."""
    from compressdet.data.formats import read_records, source_config
    from compressdet.errors import DataError, one_line

    assert one_line(name) == repr(name)[1:-1] and "\n" not in one_line(name)
    assert one_line("Köln café.png") == "Köln café.png"
    root = work / "voc_names"
    _png(root / "JPEGImages" / "a.png")
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / "a.xml").write_text(VOC_XML.replace("<filename>a.png<", f"<filename>{name}<"))
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("a\n")
    outcome(lambda: read_records(source_config("voc", root), "val"))  # one line (XML refuses NUL, BEL), or records
    if name == "0\n0":  # the fuzzed case: named, escaped
        with pytest.raises(DataError, match=r"annotation without an image \(.*/JPEGImages/0\\n0 not found\)"):
            read_records(source_config("voc", root), "val")
    croot = work / "coco_names"
    _png(croot / "images" / "a.png")
    (croot / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {**COCO_BASE, "images": [{**im, "file_name": name} for im in COCO_BASE["images"]]}
    (croot / "annotations" / "val.json").write_text(json.dumps(doc))
    outcome(lambda: read_records(source_config("coco", croot), "val"))  # a one-line DataError, or records


DETS_BASE = [{"image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "score": 0.9},
             {"image_id": 2, "category_id": 2, "bbox": [1, 1, 30, 20], "score": 0.4},
             {"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.1}]


#: what ``predict --save-txt coco`` writes: its own images (file names) and categories (names), matched by name
DETS_NAMED = {"images": [{"id": 7, "file_name": "a.png"}, {"id": 8, "file_name": "sub/b.png"}],
              "categories": [{"id": 3, "name": "Car"}, {"id": 4, "name": "person"}],
              "annotations": [{"image_id": 7, "category_id": 3, "bbox": [2, 3, 10, 8], "score": 0.9},
                              {"image_id": 8, "category_id": 4, "bbox": [1, 1, 30, 20], "score": 0.4}]}


def test_fuzz_coco_detections_reader(work):
    from compressdet.eval import load_coco_pair
    from compressdet.eval.coco_eval import evaluate_coco_json

    gt_path, det_path = work / "gt.json", work / "dets.json"
    base = json.dumps(DETS_BASE).encode()

    with counted("coco_detections") as box:
        @FUZZ
        @given(gt=st.one_of(st.just(COCO_BASE), mutated_json(COCO_BASE)),
               dets=st.one_of(mutated_json(DETS_BASE).map(lambda d: json.dumps(d).encode()),
                              mutated_json({"annotations": DETS_BASE}).map(lambda d: json.dumps(d).encode()),
                              mutated_json(DETS_NAMED).map(lambda d: json.dumps(d).encode()),
                              mutated_bytes(base)))
        def run(gt, dets):
            box["n"] += 1
            gt_path.write_text(json.dumps(gt))
            det_path.write_bytes(dets)

            def both():
                g, d = load_coco_pair(gt_path, det_path)
                with contextlib.redirect_stdout(io.StringIO()):
                    return evaluate_coco_json(g, d)

            res = outcome(both)
            if res is not None:
                assert all(math.isfinite(v) for v in res.values() if isinstance(v, float))

        run()


def _image_bytes(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((12, 16, 3)) * 255).astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def test_fuzz_image_admission(work):
    from compressdet.data.images import admit_image, read_image

    bases = {fmt: _image_bytes(fmt) for fmt in ("PNG", "JPEG", "BMP", "WEBP", "TIFF")}

    with counted("image_admission") as box:
        @FUZZ
        @given(fmt=st.sampled_from(sorted(bases)), data=st.data())
        def run(fmt, data):
            box["n"] += 1
            blob = data.draw(st.one_of(mutated_bytes(bases[fmt]), st.binary(max_size=64)))
            p = work / f"img_{box['n']}.{fmt.lower()}"  # a new name: admission remembers files by path/mtime
            p.write_bytes(blob)
            try:
                size = outcome(lambda: admit_image(p))
                if size is not None:
                    img = read_image(p)  # admitted means its pixels decode too
                    assert tuple(img.shape) == (3, *size)
            finally:
                p.unlink()

        run()
