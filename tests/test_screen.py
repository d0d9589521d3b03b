"""The screen command on a real (tiny) ONNX bundle, and decoding identical to prepare + evaluate."""

import csv
import json
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from stages import screen
from stages.lib import data, deploy, runtime
from stages.lib.data import datasets, images
from tests.conftest import ROOT

SIZE = 32


def brightness_model(path):
    """ONNX: p(defect) = sigmoid(20 * (mean pixel - 0.5)); bright images are 'defects'."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["m2"]),
        helper.make_node("MatMul", ["m2", "w"], ["mw"]),
        helper.make_node("Add", ["mw", "b"], ["logits"]),
    ]
    inits = [
        helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]),
        helper.make_tensor("w", TensorProto.FLOAT, [1, 2], [-10.0, 10.0]),
        helper.make_tensor("b", TensorProto.FLOAT, [2], [5.0, -5.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)


@pytest.fixture
def bundle(tmp_path):
    brightness_model(tmp_path / "src.onnx")
    meta = {
        "variant": "tiny",
        "task": "binary",
        "classes": ["good", "defect"],
        "threshold": 0.5,
        "input_size": SIZE,
        "decoding": deploy.decoding_rules(SIZE, 64),
        "benchmark": {"threads": 1},
    }
    deploy.write_bundle(tmp_path / "deploy", tmp_path / "src.onnx", meta)
    return tmp_path / "deploy"


def mixed_folder(folder):
    """Good (dark), defective (bright) and broken files, in a nested folder as a line might deliver them."""
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.full((40, 50), 30, np.uint8)).save(folder / "dark.png")
    Image.fromarray(np.full((40, 40, 3), 220, np.uint8)).save(folder / "sub" / "bright.jpg")
    Image.fromarray(np.full((100, 80), 60000, np.uint16)).save(folder / "bright16.png")  # 16-bit: v >> 8 = 234
    Image.fromarray(np.full((30, 30, 4), 10, np.uint8)).save(folder / "dark_rgba.png")
    good = (folder / "dark.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "sub" / "not_an_image.bmp").write_text("hello")
    (folder / "notes.txt").write_text("not picked up: not an image suffix")


def run_screen(*args):
    return subprocess.run(
        [sys.executable, "-m", "stages.screen", *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )


def test_screen_mixed_folder_gives_verdicts_lists_broken_files_and_exits_3(bundle, tmp_path):
    mixed_folder(tmp_path / "line")
    out = tmp_path / "verdicts.csv"
    proc = run_screen(bundle, tmp_path / "line", "--out", out, "--summary", tmp_path / "s.json", "--workers", "2")
    assert proc.returncode == screen.EXIT_SKIPPED == 3, proc.stderr
    rows = {r["path"].split("line/")[1]: r for r in csv.DictReader(out.open())}
    assert {k: r["verdict"] for k, r in rows.items()} == {
        "dark.png": "good",
        "dark_rgba.png": "good",
        "bright16.png": "defect",
        "sub/bright.jpg": "defect",
    }
    assert rows["dark.png"]["sha256"] == deploy.sha256_file(tmp_path / "line" / "dark.png")
    skipped = {r["path"].split("line/")[1] for r in csv.DictReader(out.with_suffix(".skipped.csv").open())}
    assert skipped == {"truncated.png", "sub/not_an_image.bmp"}
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["images"] == 4 and summary["skipped"] == 2 and summary["verdicts"] == {"good": 2, "defect": 2}
    assert summary["torch_imported"] is False  # the process that ran the model never loaded torch
    assert summary["workers"] == 2 and summary["threads"] == 1 and summary["batch_size"] == 32  # what ran
    assert summary["model_seconds"] <= summary["seconds"] and summary["decode_seconds"] > 0
    assert summary["runtime_settings"]["intra_op_allow_spinning"] is False  # decoders share the cores: no spinning
    assert "2 unreadable skipped" in proc.stderr


def test_clean_input_exits_zero(bundle, tmp_path):
    Image.fromarray(np.full((20, 20), 200, np.uint8)).save(tmp_path / "a.png")
    summary = tmp_path / "s.json"
    proc = run_screen(bundle, tmp_path / "a.png", "--out", tmp_path / "v.csv", "--workers", "0", "--summary", summary)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(summary.read_text())["runtime_settings"]["intra_op_allow_spinning"] is True  # as benchmarked
    score = float(next(csv.DictReader((tmp_path / "v.csv").open()))["score"])
    assert score == pytest.approx(1 / (1 + np.exp(-(20 * 200 / 255 - 10))), abs=1e-6)


@pytest.mark.parametrize(
    ("cores", "benchmarked", "threads", "workers"), [(2, 2, 1, 2), (4, 2, 2, 4), (16, 2, 2, 8), (1, 2, 1, 1)]
)
def test_the_model_keeps_the_benchmarked_threads_but_leaves_a_core_and_every_core_decodes(
    monkeypatch, cores, benchmarked, threads, workers
):
    monkeypatch.setattr(screen.os, "cpu_count", lambda: cores)
    assert screen.default_threads(benchmarked) == threads and screen.default_workers() == workers


def test_the_spinning_option_reaches_the_onnx_runtime_session(bundle):
    for spinning, entry in ((False, "0"), (True, "1")):
        runner = runtime.load_runner(bundle / deploy.MODEL_FILE, "onnxruntime", 1, options={"spinning": spinning})
        options = runner.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
        assert runner.settings["intra_op_allow_spinning"] is spinning


def test_screen_never_imports_torch(bundle, tmp_path):
    """Nor the training side's statistics libraries: a deployment needs the runtime, NumPy, Pillow and pandas."""
    Image.fromarray(np.full((20, 20), 10, np.uint8)).save(tmp_path / "a.png")
    code = (
        "import runpy, sys\nsys.argv = ['screen', sys.argv[1], sys.argv[2], '--out', sys.argv[3]]\n"
        "try:\n    runpy.run_module('stages.screen', run_name='__main__')\nfinally:\n"
        "    heavy = [m for m in ('torch', 'sklearn', 'scipy', 'onnx') if m in sys.modules]\n"
        "    print(heavy or 'LEAN')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(bundle), str(tmp_path / "a.png"), str(tmp_path / "v.csv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("LEAN"), proc.stdout + proc.stderr


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    msg = proc.stderr.strip()
    assert len(msg.splitlines()) == 1 and msg.startswith("screen: "), msg
    for f in fragments:
        assert f in msg, msg


def test_bad_bundle_and_empty_input_stop_with_one_line(bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(run_screen(bundle, tmp_path / "empty", "--out", tmp_path / "v.csv"), "no image files")
    one_line_error(run_screen(bundle, tmp_path / "missing.png", "--out", tmp_path / "v.csv"), "does not exist")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")

    meta = json.loads((bundle / "deploy.json").read_text())
    (bundle / "deploy.json").write_text(json.dumps({**meta, "bundle_version": 99}))
    one_line_error(run_screen(bundle, tmp_path / "a.png", "--out", tmp_path / "v.csv"), "bundle_version=99")
    (bundle / "deploy.json").write_text(json.dumps(meta))
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0")
    one_line_error(run_screen(bundle, tmp_path / "a.png", "--out", tmp_path / "v.csv"), "sha256", "does not match")
    one_line_error(run_screen(tmp_path, tmp_path / "a.png", "--out", tmp_path / "v.csv"), "deploy.json not found")
    # select found no qualifying variant: the bundle holds no model, and screen says why in one line
    deploy.write_empty_bundle(bundle, "no variant meets every constraint {'max_size_mb': 0.001}; nothing is deployed.")
    assert sorted(p.name for p in bundle.iterdir()) == ["deploy.json"]  # no stale model left behind
    one_line_error(run_screen(bundle, tmp_path / "a.png", "--out", tmp_path / "v.csv"), "holds no model", "max_size_mb")
    # a model file whose sha256 matches deploy.json, but which ONNX Runtime cannot load
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    own = {k: v for k, v in meta.items() if k not in ("bundle_version", "model_file", "model_sha256")}
    deploy.write_bundle(bundle, tmp_path / "junk.onnx", own)
    one_line_error(run_screen(bundle, tmp_path / "a.png", "--out", tmp_path / "v.csv"), "model.onnx")


@pytest.mark.parametrize(
    ("option", "fragments"),
    [
        (["--threads", "-1"], ["--threads=-1", ">= 1"]),
        (["--threads", "0"], ["--threads=0", ">= 1"]),
        (["--threads", "two"], ["--threads", "invalid int value"]),
        (["--batch-size", "0"], ["--batch-size=0", ">= 1"]),
        (["--batch-size", "1.5"], ["--batch-size", "invalid int value"]),
        (["--workers", "-2"], ["--workers=-2", ">= 0"]),
        (["--workers", "many"], ["--workers", "invalid int value"]),
        (["--out", "{tmp}"], ["--out=", "is a folder"]),
        (["--out", "{tmp}/v.csv", "--summary", "{tmp}"], ["--summary=", "is a folder"]),
        (["--out", "{tmp}/v.csv", "--files-from", "{tmp}/nolist.txt"], ["--files-from", "nolist.txt", "not found"]),
        (["--out", "{tmp}/v.csv", "--theads", "2"], ["unrecognized arguments: --theads"]),
        ([], ["--out"]),  # required
    ],
)
def test_each_bad_option_exits_2_in_one_line(bundle, tmp_path, option, fragments):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    option = [o.replace("{tmp}", str(tmp_path)) for o in option]
    if not any(o == "--out" for o in option):
        option += ["--out", str(tmp_path / "v.csv")] if option else []
    one_line_error(run_screen(bundle, tmp_path / "a.png", *option), *fragments)
    assert not (tmp_path / "v.csv").exists()  # refused before any work


def test_parallel_decoding_gives_the_sequential_bytes_in_input_order(bundle, tmp_path):
    """Decoder threads (a slow large file first, so later files finish earlier) vs the main thread alone:
    the same rows byte for byte, in input order, and the same skipped files."""
    mixed_folder(tmp_path / "line")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1500, 1500), np.uint8)).save(tmp_path / "large.png")
    files = [tmp_path / "large.png", *screen.collect([tmp_path / "line"])] * 2
    b = deploy.read_bundle(bundle)
    b["decoding"]["max_side"] = None  # decode the large file at full size: the slowest to finish
    runner = runtime.OrtRunner(b["model_path"], 1)
    seq_rows, seq_skipped, seq_t = screen.screen(b, runner, files, batch_size=3, workers=0)
    par_rows, par_skipped, par_t = screen.screen(b, runner, files, batch_size=3, workers=4)
    assert par_rows == seq_rows and par_skipped == seq_skipped
    readable = [str(f) for f in files if f.name not in ("truncated.png", "not_an_image.bmp")]
    assert [r["path"] for r in par_rows] == readable  # input order, skipped files left out
    assert [r["path"] for r in par_skipped] == [str(f) for f in files if str(f) not in readable]
    assert {r["pixel_sha256"] for r in par_rows if r["path"].endswith("large.png")} == {
        images.image_sha256(np.asarray(Image.open(tmp_path / "large.png")))
    }
    assert par_t["decode_seconds"] > 0 and seq_t["model_seconds"] > 0


def test_decoded_keeps_order_and_bounds_the_files_in_flight():
    """The ordered, bounded parallel map under screen: never more than `window` files submitted ahead."""
    started, done = [], []

    def slow_first(i):
        started.append(i)
        time.sleep(0.05 if i == 0 else 0.001)
        assert len(started) - len(done) <= 5, "more files in flight than the window"
        return i

    for i in screen.decoded(range(40), slow_first, workers=3, window=4):
        done.append(i)
    assert done == list(range(40))


@pytest.mark.parametrize("resize", images.RESIZE_MODES)
@pytest.mark.parametrize("max_side", [None, 64])
def test_decoding_matches_prepare_then_load_split(tmp_path, max_side, resize):
    """Raw file -> prepare (read_image, PNG made square by the resize mode) -> data.load_split + to_float ==
    deploy.decode of the raw file with that mode: no train/serve skew in any mode, on non-square images."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(rng.integers(0, 256, (90, 120), np.uint8)).save(raw / "gray.png")
    Image.fromarray(rng.integers(0, 256, (70, 50, 3), np.uint8)).save(raw / "rgb.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (64, 64, 4), np.uint8)).save(raw / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (150, 40), np.uint16)).save(raw / "deep.png")
    Image.fromarray(rng.integers(0, 256, (33, 47), np.uint8)).convert("P").save(raw / "palette.bmp")
    files = sorted(raw.iterdir())
    pixels = [images.read_image(f, max_side) for f in files]
    table = datasets.pd.DataFrame({"label": 0, "split": "test", "sha256": [images.image_sha256(p) for p in pixels]})
    datasets.write_prepared(tmp_path / "prepared", pixels, table, resize)
    x, _ = data.load_split(tmp_path / "prepared", "test", SIZE)
    expected = data.to_float(x).numpy()
    for i, f in enumerate(files):
        got, pixel_sha = deploy.decode(f.read_bytes(), SIZE, max_side, resize=resize)
        assert got.dtype == np.float32 and np.array_equal(got, expected[i]), f.name
        assert pixel_sha == table["sha256"][i]


@pytest.mark.parametrize("shape", [(5, 7), (31, 33), (300, 300), (1000, 17), (40, 60, 3), (7, 500, 3)])
@pytest.mark.parametrize("size", [32, 128])
def test_model_input_equals_convert_to_rgb_then_resize(shape, size):
    """Resizing in the image's own mode, then replicating gray to RGB, gives load_split's bytes exactly,
    upscaling and downscaling."""
    pixels = np.random.default_rng(sum(shape) + size).integers(0, 256, shape, np.uint8)
    rgb = Image.fromarray(pixels).convert("RGB").resize((size, size), Image.BILINEAR)
    expected = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    got = deploy.model_input(pixels, size)
    assert got.dtype == np.float32 and got.shape == (3, size, size)
    assert np.ascontiguousarray(got).tobytes() == expected.tobytes()


def test_resize_modes_keep_the_aspect_ratio_or_not():
    """A bright 20x60 bar: squash stretches it over the square, pad centres it on black, crop keeps its middle."""
    wide = np.full((20, 60), 200, np.uint8)
    wide[:, :5] = 10  # a dark left edge, cut off by the centre crop
    assert images.fit_square(wide, "squash") is wide
    padded = images.fit_square(wide, "pad")
    assert padded.shape == (60, 60) and (padded[20:40] == wide).all()
    assert not padded[:20].any() and not padded[40:].any()  # black above and below
    cropped = images.fit_square(wide, "crop")
    assert cropped.shape == (20, 20) and (cropped == 200).all()
    tall_rgb = np.arange(7 * 4 * 3, dtype=np.uint8).reshape(7, 4, 3)
    assert (images.fit_square(tall_rgb, "crop") == tall_rgb[1:5]).all()  # odd difference: the extra row from below
    assert (images.fit_square(tall_rgb, "pad")[:, 1:5] == tall_rgb).all()  # 7x7: one column left, two right
    squashed = deploy.model_input(wide, SIZE)
    assert squashed[0, SIZE // 2, 0] < 0.1 and squashed[0, 0, SIZE // 2] > 0.7  # the bar fills the square
    boxed = deploy.model_input(images.fit_square(wide, "pad"), SIZE)
    assert boxed[0, 0, SIZE // 2] == 0 and boxed[0, SIZE // 2, SIZE // 2] > 0.7  # black bands, bar in the middle
    with pytest.raises(ValueError, match="stretch"):
        images.fit_square(wide, "stretch")


@pytest.mark.parametrize("resize", images.RESIZE_MODES)
def test_screen_honours_the_bundles_resize_mode(bundle, tmp_path, resize):
    """A 24x96 image, bright in the middle third only: the mean the brightness model sees, and so the score,
    follows the bundle's mode (crop sees only bright pixels, pad adds black bands)."""
    meta = json.loads((bundle / "deploy.json").read_text())
    meta["decoding"] = deploy.decoding_rules(SIZE, 64, resize)
    (bundle / "deploy.json").write_text(json.dumps(meta))
    pixels = np.full((24, 96), 40, np.uint8)
    pixels[:, 36:60] = 250
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    proc = run_screen(bundle, tmp_path / "wide.png", "--out", tmp_path / "v.csv")
    assert proc.returncode == 0, proc.stderr
    score = float(next(csv.DictReader((tmp_path / "v.csv").open()))["score"])
    x = deploy.model_input(images.fit_square(images.read_image(tmp_path / "wide.png", 64), resize), SIZE)
    assert score == pytest.approx(1 / (1 + np.exp(-(20 * x.mean() - 10))), abs=1e-5)
    assert {"squash": "good", "pad": "good", "crop": "defect"}[resize] == next(
        csv.DictReader((tmp_path / "v.csv").open())
    )["verdict"]


def test_unknown_or_missing_resize_mode_in_a_bundle(bundle, tmp_path):
    """A mode this screen does not know stops in one line; a bundle from before the mode was recorded squashes."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    meta = json.loads((bundle / "deploy.json").read_text())
    assert meta["decoding"]["resize_mode"] == "squash"
    (bundle / "deploy.json").write_text(json.dumps({**meta, "decoding": {**meta["decoding"], "resize_mode": "tile"}}))
    one_line_error(run_screen(bundle, tmp_path / "a.png", "--out", tmp_path / "v.csv"), "resize_mode='tile'", "pad")
    old = {k: v for k, v in meta["decoding"].items() if k not in ("resize_mode", "resize_rule")}
    (bundle / "deploy.json").write_text(json.dumps({**meta, "decoding": old}))
    assert deploy.resize_mode(deploy.read_bundle(bundle)) == "squash"
    assert run_screen(bundle, tmp_path / "a.png", "--out", tmp_path / "v.csv").returncode == 0
