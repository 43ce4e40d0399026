"""What `predict` takes, from Python and the command line: arrays in the range they hold,
folders, unreadable files among a folder's images, and the figure only when asked for."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.experiment import train
from cnnlab.predict import image_paths
from tests.conftest import run_cli, tiny_recipe


@pytest.fixture(scope="module")
def run_path(tmp_path_factory) -> Path:
    """A tiny run of the demo recipe (two tasks, test-time views), in fp32."""
    return train(tiny_recipe(tmp_path_factory.mktemp("predict"), "train.precision=fp32")).path


def photos(folder: Path, n: int) -> list[Path]:
    """n grey 28x28 PNGs with random pixels, written into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = [folder / f"{i}.png" for i in range(n)]
    for f in files:
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(f)
    return files


def truncated(path: Path) -> Path:
    """A PNG cut in half: it opens, then fails to load."""
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


def test_a_float_image_outside_0_to_1_is_refused(run_path):
    run = cnnlab.load_run(run_path)
    photo = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    photo[0, 0], photo[0, 1] = 0, 255
    as_uint8 = run.predict([photo])["cls"]
    scaled = run.predict([photo.astype(np.float32) / 255])["cls"]  # the same image, in [0, 1]
    assert scaled.labels == as_uint8.labels
    assert np.allclose(scaled.probabilities, as_uint8.probabilities, atol=1e-5)
    with pytest.raises(cnnlab.CnnlabError) as raw:
        run.predict([photo.astype(np.float32)])
    assert str(raw.value) == (
        "predict: image values 0 to 255 (float32) look like 0-255 pixels; divide them by 255 "
        "or pass uint8"
    )
    normalized = (photo.astype(np.float32) / 255 - 0.5) / 0.25
    with pytest.raises(
        cnnlab.CnnlabError, match=r"values -2 to 2 \(float32\) look normalized already; "
    ):
        run.predict(normalized)
    with pytest.raises(cnnlab.CnnlabError, match="0-255 pixels"):  # int64 as well as float
        run.predict(photo.astype(np.int64))
    deep = photo.astype(np.int32) * 257  # a 16-bit image read as int32: not 0-255
    with pytest.raises(cnnlab.CnnlabError) as wide:
        run.predict([deep])
    assert str(wide.value) == (
        "predict: image values 0 to 6.554e+04 (int32) look like 16-bit pixels; pass them as "
        "uint16 (scaled as the run's 16-bit files were), not as another type"
    )
    as_uint16 = run.predict([deep.astype(np.uint16)])["cls"]  # as advised: the same answers
    assert as_uint16.labels == as_uint8.labels


def test_a_folder_is_refused_by_name_and_a_missing_file_is_not_found(run_path, tmp_path):
    run = cnnlab.load_run(run_path)
    files = photos(tmp_path / "photos", 3)
    with pytest.raises(cnnlab.CnnlabError) as folder:
        run.predict([tmp_path / "photos"])
    said = str(folder.value)
    assert said.startswith(f"predict: {tmp_path / 'photos'} is a folder; pass its image files")
    assert "cnnlab.predict.image_paths(" in said and "\n" not in said
    listed = image_paths([str(tmp_path / "photos")])  # as the message says: names, sorted
    assert listed == files
    assert run.predict(listed)["cls"].labels == run.predict(files)["cls"].labels
    with pytest.raises(cnnlab.CnnlabError, match=r"missing.png not found$"):
        run.predict([tmp_path / "missing.png"])


def test_a_folders_unreadable_files_are_skipped_with_one_warning(run_path, tmp_path):
    good = photos(tmp_path / "mydata" / "img", 3)
    bad = [truncated(tmp_path / "mydata" / "img" / "trunc.png")]
    bad.append(tmp_path / "mydata" / "notes.jpg")
    bad[-1].write_text("not a photo")
    out = run_cli("predict", str(run_path), str(tmp_path / "mydata"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    named = [line for line in out.stdout.splitlines() if not line.startswith("  ")]
    assert named == [str(f) for f in good]  # the readable ones, answered
    (warning,) = [line for line in out.stderr.splitlines() if "warning" in line]
    assert warning.startswith("predict: warning: 2 files skipped")
    assert str(bad[0]) in warning and str(bad[1]) in warning
    assert "figure:" not in out.stdout and not (tmp_path / "predictions.png").exists()

    explicit = run_cli("predict", str(run_path), str(good[0]), str(bad[0]), cwd=tmp_path)
    assert explicit.returncode == 2 and explicit.stdout == ""  # named: it stops, in one line
    assert explicit.stderr.strip() == (
        f"error: predict: {bad[0]} is not a readable image (image file is truncated)"
    )
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    truncated(only_bad / "a.png")
    none = run_cli("predict", str(run_path), str(only_bad))
    assert none.returncode == 2 and none.stderr.strip().splitlines()[-1] == (
        f"error: no readable images in {only_bad} (1 found, none of them decodes); give image "
        "files (.bmp, .gif, .heic, .heif, .jpeg, .jpg, .png, .tif, .tiff, .webp)"
    )


def test_an_exported_file_skips_them_too_and_draws_only_when_asked(run_path, tmp_path):
    onnx = tmp_path / "model.onnx"
    made = run_cli("export", str(run_path), "--no-check", "--no-views", "--out", str(onnx))
    assert made.returncode == 0, made.stderr
    good = photos(tmp_path / "mydata", 2)
    truncated(tmp_path / "mydata" / "trunc.png")
    figure = tmp_path / "figures" / "answers.png"
    out = run_cli("predict", str(onnx), str(tmp_path / "mydata"), "--figure", str(figure),
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stdout.splitlines() if line.startswith(str(tmp_path))] == [
        *map(str, good)
    ]
    (warning,) = out.stderr.splitlines()  # worded "1 file" now, "1 files" before
    assert re.match(
        rf"predict: warning: 1 files? skipped .*: {tmp_path}/mydata/trunc.png$", warning
    )
    assert out.stdout.splitlines()[-1] == f"figure: {figure}"
    assert Image.open(figure).size[0] > 100 and not (tmp_path / "predictions.png").exists()


def test_a_file_that_is_not_an_exported_model_is_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from cnnlab.export import predict_exported

    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "junk.onnx").write_bytes(b"junk\n")
    with pytest.raises(cnnlab.CnnlabError, match=r"junk.onnx is not a readable ONNX file"):
        predict_exported(tmp_path / "junk.onnx", [tmp_path / "a.png"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")  # valid, but not cnnlab's
    with pytest.raises(cnnlab.CnnlabError, match=r"other.onnx was not exported by cnnlab"):
        predict_exported(tmp_path / "other.onnx", [tmp_path / "a.png"])
    done = run_cli("predict", str(tmp_path / "junk.onnx"), str(tmp_path / "a.png"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: predict: ")


def test_an_image_named_that_is_not_there_is_one_line(tmp_path):
    with pytest.raises(cnnlab.CnnlabError) as err:
        image_paths([tmp_path / "gone.png"])
    assert str(err.value) == (
        f"predict: {tmp_path / 'gone.png'}: no such file or folder; give image files or a folder"
    )


def test_a_run_folder_among_the_images_is_one_line(tmp_path):
    """`cnnlab predict shoe.png RUN` (swapped) answered with ImageNet's model on the run's
    report PNGs, and `predict RUN RUN` with the run's model on its own figures."""
    run = tmp_path / "runs" / "r"
    (run / "figures").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: r\n")
    Image.new("L", (8, 8)).save(run / "figures" / "curves.png")
    Image.new("L", (8, 8)).save(tmp_path / "shoe.png")
    said = (
        f"predict: {run} is a run folder, not images; name the run first and the images after "
        f"it: cnnlab predict {run} IMAGES"
    )
    with pytest.raises(cnnlab.CnnlabError) as err:
        image_paths([tmp_path / "shoe.png", run])
    assert str(err.value) == said
    done = run_cli("predict", str(tmp_path / "shoe.png"), str(run))  # before a model loads
    assert done.returncode == 2 and done.stderr == f"error: {said}\n"


def colour_photo(seed: int = 3) -> np.ndarray:
    """(40, 30, 3) uint8 of random colour: its channels differ."""
    return np.random.default_rng(seed).integers(0, 256, (40, 30, 3), dtype=np.uint8)


def test_colour_images_for_a_grey_model_are_said_once_whatever_they_come_as(
    run_path, tmp_path, capsys
):
    """Colour images to a model of grey ones were made grey without a word: one line, by
    what an image shows (a grey scan saved as RGB, or as a JPEG, is grey), files included
    (a colour JPEG decodes straight to grey, so its colour is looked at apart)."""
    run = cnnlab.load_run(run_path)
    grey = np.random.default_rng(4).integers(0, 256, (40, 30), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "scan.png")  # grey, as RGB
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "scan.jpg", quality=90)
    Image.fromarray(colour_photo()).save(tmp_path / "photo.jpg", quality=90)
    Image.fromarray(colour_photo()).save(tmp_path / "photo.png")
    capsys.readouterr()
    run.predict([tmp_path / "scan.png", tmp_path / "scan.jpg", grey])
    assert capsys.readouterr().err == ""
    run.predict([tmp_path / "scan.png", tmp_path / "photo.jpg", tmp_path / "photo.png"])
    assert capsys.readouterr().err == (
        f"predict: warning: 2 of 3 images (first: {tmp_path / 'photo.jpg'}) are in colour, "
        "and the run's model takes grey images: made grey by their luminance\n"
    )
    run.predict([Image.fromarray(colour_photo()), grey, colour_photo(5)])  # opened, arrays
    assert "2 of 3 images (first: image 0) are in colour" in capsys.readouterr().err


def test_grey_images_for_a_colour_model_are_said_but_not_for_a_colorizer(capsys):
    from cnnlab.inference import decoded_batch

    grey = np.random.default_rng(4).integers(0, 256, (40, 30), dtype=np.uint8)
    decoded_batch([colour_photo(), Image.fromarray(colour_photo(6))], 3, (32, 32))
    assert capsys.readouterr().err == ""
    decoded_batch([colour_photo(), grey, np.stack([grey] * 3, -1)], 3, (32, 32))
    assert capsys.readouterr().err == (
        "predict: warning: 2 of 3 images (first: image 1) are grey, and the run's model was "
        "trained on colour images: given as three equal channels, which it never saw; its "
        "answers may suffer\n"
    )
    decoded_batch([grey], 3, (32, 32), say_sources=False)  # a colorizer colours grey ones
    assert capsys.readouterr().err == ""
    with pytest.raises(cnnlab.CnnlabError, match="an image with 2 channels; the model takes 3$"):
        decoded_batch([torch.zeros(2, 8, 8)], 3, (32, 32))  # neither colour nor grey
