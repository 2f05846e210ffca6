"""ImageFolder channels: greyscale trees read as one channel, colour as RGB, ``channels`` forcing
either; real PNG/GIF files written with Pillow (``test_data.py`` covers layouts and errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rift.adversarial_training import adversarially_train
from rift.attacks import PGD
from rift.config import AttackSpec, DatasetSpec, RiftConfig
from rift.data import load_dataset
from rift.data.digits import load_digits
from rift.dataset_formats import imagefolder_channels, is_grey_image
from rift.errors import CheckpointMismatchError, DatasetError
from rift.evaluation import evaluate_accuracy
from rift.models import build_model
from rift.pipeline import prepare_run

SIZE = (6, 5)  # (W, H) of the written images
GREYS = {"cat": 40, "dog": 130, "emu": 220}


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _grey_image(level: int, mark: int) -> Image.Image:
    """``level`` everywhere but the last row's last pixel, ``mark``: a constant image is
    refused as content (rift.image_content), and the marks keep the images distinct."""
    image = Image.new("L", SIZE, level)
    image.putpixel((SIZE[0] - 1, SIZE[1] - 1), mark)
    return image


def _grey_tree(root: Path, per_class: int = 3, mode: str = "L") -> None:
    for name, level in GREYS.items():
        for i in range(per_class):
            _save(root / name / f"{i}.png", _grey_image(level, level + 1 + i).convert(mode))


def _spec(root: Path, **options: object) -> DatasetSpec:
    return DatasetSpec.model_validate({"name": "imagefolder", "path": str(root), **options})


def _every_image(root: Path, **options: object) -> torch.Tensor:
    splits = load_dataset(_spec(root, **options), seed=0)
    return torch.cat([splits.train.images, splits.validation.images, splits.test.images])


def test_a_grey_tree_loads_as_one_channel_with_its_pixels(tmp_path: Path) -> None:
    _grey_tree(tmp_path / "train")
    _grey_tree(tmp_path / "val", per_class=2)
    splits = load_dataset(_spec(tmp_path), seed=0)
    assert splits.image_shape == (1, 5, 6) and splits.in_channels == 1
    assert splits.augment == "crop"  # single-channel data is not flipped by default
    for part in (splits.train, splits.validation, splits.test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (1, 5, 6)
        for image, label in zip(part.images, part.labels, strict=True):
            assert image[0, :-1].unique().tolist() == [list(GREYS.values())[int(label)]]


def test_one_colour_image_anywhere_makes_the_tree_rgb(tmp_path: Path) -> None:
    # The colour image is in the held-out folder only: the decision covers train and test.
    _grey_tree(tmp_path / "train")
    _grey_tree(tmp_path / "val", per_class=1)
    _save(tmp_path / "val" / "dog" / "red.png", Image.new("RGB", SIZE, (200, 10, 10)))
    splits = load_dataset(_spec(tmp_path), seed=0)
    assert splits.image_shape == (3, 5, 6)
    assert splits.augment == "crop_flip"
    greys = splits.train.images  # grey images repeat their level in the three channels
    assert torch.equal(greys[:, 0], greys[:, 1]) and torch.equal(greys[:, 1], greys[:, 2])
    colours = {tuple(image[:, 0, 0].tolist()) for image in splits.test.images}
    assert (200, 10, 10) in colours and (130, 130, 130) in colours


def test_sixteen_bit_grey_is_scaled_and_stays_one_channel(tmp_path: Path) -> None:
    for name, level in GREYS.items():
        for i in range(4):
            pixels = np.full((5, 6), level * 257, np.uint16)
            pixels[-1, -1] = (level + 1 + i) * 257
            deep = Image.fromarray(pixels)
            assert deep.mode == "I;16"
            _save(tmp_path / name / f"{i}.png", deep)
    every = _every_image(tmp_path)
    assert every.shape == (12, 1, 5, 6)
    assert sorted({int(image[0, :-1].unique()) for image in every}) == sorted(GREYS.values())


@pytest.mark.parametrize("mode", ["1", "LA", "P"])
def test_bilevel_grey_alpha_and_grey_palette_images_are_grey(tmp_path: Path, mode: str) -> None:
    _grey_tree(tmp_path, per_class=4)
    image = Image.new("L", SIZE, 255).convert(mode)
    if mode == "P":
        image.putpalette([v for level in range(256) for v in (level, level, level)])
    _save(tmp_path / "cat" / f"extra.{'gif' if mode == 'P' else 'png'}", image)
    with Image.open(next((tmp_path / "cat").glob("extra.*"))) as written:
        assert written.mode == mode  # the file really is of that mode
    every = _every_image(tmp_path)
    assert every.shape[1] == 1
    assert sum(int(image.unique()[0]) == 255 for image in every) == 1


def test_a_colour_palette_makes_the_tree_rgb(tmp_path: Path) -> None:
    _grey_tree(tmp_path, per_class=4)
    image = Image.new("P", SIZE, 1)
    image.putpalette([0, 0, 0, 0, 90, 0])  # entry 1 is green
    _save(tmp_path / "cat" / "green.gif", image)
    every = _every_image(tmp_path)
    assert every.shape[1] == 3
    assert [0, 90, 0] in [image[:, 0, 0].tolist() for image in every]


def test_channels_option_forces_rgb_or_grey(tmp_path: Path) -> None:
    _grey_tree(tmp_path / "grey", per_class=4)
    rgb = _every_image(tmp_path / "grey", channels=3)
    assert rgb.shape[1] == 3 and torch.equal(rgb[:, 0], rgb[:, 2])
    colour = (200, 10, 10)
    for name in GREYS:
        for i in range(4):
            image = Image.new("RGB", SIZE, colour)
            image.putpixel((SIZE[0] - 1, SIZE[1] - 1), (0, 0, i))  # not all one image
            _save(tmp_path / "colour" / name / f"{i}.png", image)
    grey = _every_image(tmp_path / "colour", channels=1)
    luma = Image.new("RGB", (1, 1), colour).convert("L").getpixel((0, 0))  # ITU-R 601-2: 67
    assert grey.shape[1] == 1 and grey[:, :, :-1].unique().tolist() == [luma]
    assert _every_image(tmp_path / "colour").shape[1] == 3  # auto


def test_float_images_are_still_refused_in_a_grey_tree(tmp_path: Path) -> None:
    _grey_tree(tmp_path, per_class=4)
    Image.fromarray(np.full((5, 6), 0.5, np.float32)).save(tmp_path / "cat" / "float.tiff")
    for channels in ("auto", 1):
        with pytest.raises(DatasetError, match=r"float\.tiff.*floating-point pixels"):
            load_dataset(_spec(tmp_path, channels=channels), seed=0)


def test_the_greyness_rule() -> None:
    assert all(is_grey_image(mode, None) for mode in ("1", "L", "LA", "I;16", "I;16B"))
    assert not any(is_grey_image(mode, None) for mode in ("RGB", "RGBA", "CMYK", "P", "I", "F"))
    assert is_grey_image("P", [0, 0, 0, 7, 7, 7])
    assert not is_grey_image("P", [0, 0, 0, 7, 7, 8])
    assert imagefolder_channels("auto", True) == 1 and imagefolder_channels("auto", False) == 3
    assert imagefolder_channels(3, True) == 3 and imagefolder_channels(1, False) == 1


def test_channels_is_refused_for_other_sources() -> None:
    with pytest.raises(ValueError, match=r"'channels'.*'npz'"):
        DatasetSpec.model_validate({"name": "npz", "path": "x.npz", "channels": 1})


def _digits_tree(root: Path) -> None:
    # sklearn's digits (8×8 grey, 10 classes) as one 8-bit grey PNG each: train/ and val/.
    digits = load_digits(DatasetSpec(name="digits")).train
    for i, (image, label) in enumerate(zip(digits.images, digits.labels, strict=True)):
        folder = "val" if i % 5 == 0 else "train"
        _save(root / folder / f"digit{int(label)}" / f"{i}.png", Image.fromarray(image[0].numpy()))


def test_a_one_channel_small_cnn_trains_on_a_grey_imagefolder(tmp_path: Path) -> None:
    _digits_tree(tmp_path)
    config = RiftConfig.model_validate({
        "architecture": {"name": "small_cnn", "num_classes": 10},
        "dataset": {"name": "imagefolder", "path": str(tmp_path)},
        "device": "cpu"})
    splits = load_dataset(config.dataset, seed=0)
    assert splits.image_shape == (1, 8, 8) and len(splits.test) == 360
    torch.manual_seed(0)
    model = build_model(config.architecture, in_channels=splits.in_channels,
                        image_size=splits.image_size)
    cpu = torch.device("cpu")
    # A PGD of no steps leaves the images clean: plain training, a third of the time of PGD-2.
    clean = PGD.from_spec(AttackSpec(eps=0.0, steps=0, random_start=False))
    before = evaluate_accuracy(model, splits.test, attack=None, batch_size=256, device=cpu)
    adversarially_train(model, splits, clean, epochs=3, lr=0.1, batch_size=64, device=cpu,
                        seed=0)
    after = evaluate_accuracy(model, splits.test, attack=None, batch_size=256, device=cpu)
    assert before.clean_accuracy < 25 < 80 < after.clean_accuracy  # chance is 10 %
    # The pipeline takes the trained 1-channel weights with the same tree.
    prepared = prepare_run(config, model.state_dict())
    assert prepared.splits.image_shape == (1, 8, 8)


def test_an_rgb_checkpoint_on_a_grey_tree_is_told_how_to_read_it_as_rgb(tmp_path: Path) -> None:
    # Before 'channels', every tree was read as RGB: a checkpoint trained on RGB copies of a
    # grey tree now meets a 1-channel model, and the mismatch says what restores the old reading.
    _grey_tree(tmp_path, per_class=4)
    config = RiftConfig.model_validate({
        "architecture": {"name": "small_cnn", "num_classes": 3},
        "dataset": {"name": "imagefolder", "path": str(tmp_path)}, "device": "cpu"})
    rgb_state = build_model(config.architecture, in_channels=3, image_size=8).state_dict()
    with pytest.raises(CheckpointMismatchError,
                       match=r"conv1\.weight.*read with 1 channel.*dataset\.channels to 3"):
        prepare_run(config, rgb_state)
    as_rgb = config.model_copy(update={"dataset": _spec(tmp_path, channels=3)})
    assert prepare_run(as_rgb, rgb_state).splits.image_shape == (3, 5, 6)


def test_the_upload_content_rules_apply_to_the_library_loader(tmp_path: Path) -> None:
    """The rules an upload is held to (rift.image_content), now also when the library reads a
    tree: before, a tree of blank frames, of one image copied, of 0/1 masks or of one class
    loaded and ran."""
    def load(root: Path) -> str:
        with pytest.raises(DatasetError) as error:
            load_dataset(_spec(root), seed=0)
        return error.value.message

    for name in GREYS:  # two of three training images of each class blank
        for i in range(3):
            _save(tmp_path / "blank" / name / f"{i}.png",
                  _grey_image(0, 0 if i else 9))
    assert load(tmp_path / "blank").startswith(
        f"dataset 'imagefolder': the training images (class folders in {tmp_path / 'blank'}): "
        "6 of 9 images are constant (every pixel one value, e.g. ")
    for name in GREYS:
        for i in range(3):
            _save(tmp_path / "copies" / name / f"{i}.png", _grey_image(50, 60))
    assert "all 9 images are identical" in load(tmp_path / "copies")
    for index, name in enumerate(GREYS):
        for i in range(3):
            mask = Image.new("L", SIZE, 0)
            mask.putpixel((index, i), 1)
            _save(tmp_path / "masks" / name / f"{i}.png", mask)
    assert "the largest value here is 1" in load(tmp_path / "masks")
    _grey_tree(tmp_path / "one" / "train")
    _grey_tree(tmp_path / "one" / "val", per_class=1)
    for i in range(2):  # the held-out images are judged apart from the training ones
        _save(tmp_path / "one" / "val" / "emu" / f"blank{i}.png", Image.new("L", SIZE, 0))
        _save(tmp_path / "one" / "val" / "cat" / f"blank{i}.png", Image.new("L", SIZE, 0))
    assert load(tmp_path / "one").startswith(
        f"dataset 'imagefolder': the held-out images ({tmp_path / 'one' / 'val'}): 4 of 7 "
        "images are constant")
    _save(tmp_path / "single" / "cat" / "0.png", _grey_image(40, 41))
    _save(tmp_path / "single" / "cat" / "1.png", _grey_image(40, 42))
    assert "every training label is 'cat' (the only class folder)" in load(tmp_path / "single")
