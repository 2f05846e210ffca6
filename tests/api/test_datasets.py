"""``/v1/datasets`` over HTTP: npz and ImageFolder tar uploads are checked before they are kept;
unsafe or malformed archives are 422 naming the problem and leave nothing behind."""

from __future__ import annotations

import io
import itertools
import os
import tarfile
import zipfile

import numpy as np
import pytest

from persistence.models import Dataset
from tests.api.helpers import MIB, Api, error_of, varied_images

pytestmark = pytest.mark.service


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


#: Each image made below differs from the others: uploads refuse constant or identical images.
_IMAGES_MADE = itertools.count()


def _around(value: int, width: int, height: int) -> np.ndarray:
    """(height, width) pixels near ``value`` (0–255) that vary within the image, and from one
    call to the next."""
    shift = next(_IMAGES_MADE)
    ramp = (np.arange(height * width).reshape(height, width) + 5 * shift) % 24
    return np.clip(value - 12 + ramp, 0, 255)


def png_bytes(width: int = 12, height: int = 10, value: int = 128) -> bytes:
    """A colour PNG whose red is near ``value`` and blue near 255 - ``value``."""
    from PIL import Image

    red = _around(value, width, height)
    pixels = np.stack([red, np.zeros_like(red), 255 - red], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def grey_png_bytes(width: int = 12, height: int = 10, value: int = 128, mode: str = "L") -> bytes:
    """A greyscale PNG near grey ``value``: 8-bit (``L``) or, with ``mode="I;16"``, 16-bit."""
    from PIL import Image

    grey = _around(value, width, height)
    buffer = io.BytesIO()
    if mode == "I;16":
        Image.fromarray((grey * 257).astype(np.uint16)).save(buffer, "PNG")
    else:
        Image.fromarray(grey.astype(np.uint8)).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz",
              extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra or []:
            archive.addfile(info)
    return buffer.getvalue()


def upload(api: Api, name: str, content: bytes) -> object:
    return api.client.post("/v1/datasets", files={"file": (name, content)})


def test_npz_upload(api: Api) -> None:
    rng = np.random.default_rng(0)
    content = npz_bytes(x=rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8),
                        y=rng.integers(0, 4, 40), x_test=rng.random((10, 3, 8, 8)) > 2,
                        y_test=np.zeros(10, dtype=np.int64))
    response = upload(api, "bad-test.npz", content)
    # x_test is boolean, not uint8 or float: refused naming the key.
    assert response.status_code == 422 and "x_test" in error_of(response)["message"]

    content = npz_bytes(x=rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8),
                        y=rng.integers(0, 4, 40))
    response = upload(api, "mine.npz", content)
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["kind"] == "npz"
    assert record["image_shape"] == [3, 8, 8]
    assert record["num_examples"] == 40
    assert record["size"] == len(content)
    assert response.headers["location"] == f"/v1/datasets/{record['id']}"
    assert record["content"] == "images" and record["num_features"] is None
    labels = [int(v) for v in np.load(io.BytesIO(content))["y"]]
    assert (record["label_min"], record["label_max"]) == (min(labels), max(labels))
    assert record["num_classes"] == max(labels) + 1
    again = api.client.get(f"/v1/datasets/{record['id']}")
    # The record read back describes the data as the upload's answer did.
    assert again.status_code == 200 and again.json() == record
    assert api.count(Dataset) == 1 and len(api.stored_files()) == 1


def test_feature_vectors_upload(api: Api) -> None:
    rng = np.random.default_rng(1)
    content = npz_bytes(x=rng.normal(0, 300, (30, 7)), y=rng.permutation(np.arange(30) % 3),
                        x_test=rng.normal(0, 1, (6, 7)), y_test=np.array([0, 1, 2, 3, 0, 1]))
    response = upload(api, "tabular.npz", content)
    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["kind"], record["content"]) == ("npz", "features")
    assert record["num_features"] == 7 and record["image_shape"] is None
    assert (record["num_classes"], record["label_min"], record["label_max"]) == (4, 0, 3)
    # The inputs' range, over x and x_test, overall and per feature: what attack.domain must hold.
    arrays = np.load(io.BytesIO(content))
    both = np.concatenate([arrays["x"], arrays["x_test"]])
    assert (record["value_min"], record["value_max"]) == (both.min(), both.max())
    assert record["channel_value_min"] == both.min(axis=0).tolist()
    assert record["channel_value_max"] == both.max(axis=0).tolist()
    assert api.client.get(f"/v1/datasets/{record['id']}").json() == record


def test_bad_values_are_refused_at_upload(api: Api) -> None:
    images = varied_images((12, 1, 8, 8), np.float32)
    nan_late = images.copy()
    nan_late[-1, 0, 7, 7] = np.nan  # the very last value: every value is read
    cases = {
        "nan": (npz_bytes(x=nan_late, y=np.zeros(12, np.int64)), "NaN"),
        "inf test": (npz_bytes(x=images, y=np.zeros(12, np.int64),
                               x_test=np.full((2, 1, 8, 8), np.inf, np.float32),
                               y_test=np.zeros(2, np.int64)), "x_test"),
        "0-255 floats": (npz_bytes(x=images * 255, y=np.zeros(12, np.int64)), "[0, 1]"),
        "negative pixels": (npz_bytes(x=images - 1, y=np.zeros(12, np.int64)), "[0, 1]"),
        "nan features": (npz_bytes(x=np.array([[1.0, np.nan]] * 4), y=np.zeros(4, np.int64)),
                         "NaN"),
        "negative test label": (npz_bytes(x=images, y=np.zeros(12, np.int64), x_test=images[:2],
                                          y_test=np.array([0, -3])), "y_test"),
    }
    for name, (content, reason) in cases.items():
        response = upload(api, f"{name}.npz", content)
        assert response.status_code == 422, (name, response.text)
        error = error_of(response)
        assert error["field"] == "file"
        assert reason.lower() in error["message"].lower(), (name, error["message"])
    api.assert_nothing_stored()


def test_labels_needing_more_classes_than_any_model_are_refused(api: Api) -> None:
    # Before: a label of 2**40 was a 422 invalid_value with field null (its class count
    # overflowed the database column); no architecture has more than 100,000 classes.
    images = varied_images((4, 8, 8, 1))
    for largest in (2**40, 100_000, np.iinfo(np.uint64).max):
        labels = np.array([0, 1, 2, largest], np.uint64 if largest > 2**62 else np.int64)
        response = upload(api, "wide.npz", npz_bytes(x=images, y=labels))
        assert response.status_code == 422, (largest, response.text)
        error = error_of(response)
        assert (error["code"], error["field"]) == ("invalid_dataset", "file")
        if largest > 2**63:  # no class index at all: the format check names the key first
            assert "'y' holds a label of" in error["message"] and "beyond int64" in error["message"]
        else:
            assert error["max_classes"] == 100_000 and "largest label" in error["message"]
    api.assert_nothing_stored()
    widest = upload(api, "widest.npz", npz_bytes(x=images, y=np.array([0, 1, 2, 99_999])))
    assert widest.status_code == 201, widest.text
    assert widest.json()["num_classes"] == 100_000


def encrypted_flag(zip_bytes: bytes) -> bytes:
    """The same zip with every member marked as encrypted (general-purpose flag bit 0)."""
    data = bytearray(zip_bytes)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (found := data.find(signature, start)) != -1:
            data[found + flag_offset] |= 1
            start = found + 4
    return bytes(data)


def _with_member(npz: bytes, name: str, array: np.ndarray) -> bytes:
    """``npz`` with one more member ``name`` holding ``array`` as an ``.npy``."""
    member = io.BytesIO()
    np.save(member, array)
    buffer = io.BytesIO(npz)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr(name, member.getvalue())
    return buffer.getvalue()


def _header_only_x(shape: tuple[int, ...]) -> bytes:
    """An npz whose ``x`` is the ``.npy`` header of float32 ``shape`` alone, and its labels."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buffer = io.BytesIO(npz_bytes(y=np.arange(shape[0]) % 2))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("x.npy", header.getvalue())
    return buffer.getvalue()


def test_bad_npz_archives_are_refused(api: Api) -> None:
    x = varied_images((5, 8, 8), np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=np.zeros(5, dtype=np.int64))
    nan_x = x.copy()
    nan_x[0, 0, 0] = np.nan
    cases = {
        "no y": (npz_bytes(x=x), "'y'"),
        "objects": (npz_bytes(x=x, y=np.array([object()] * 5, dtype=object)), "objects"),
        "counts": (npz_bytes(x=x, y=np.zeros(4, dtype=np.int64)), "4 labels"),
        "only x_test": (npz_bytes(x=x, y=np.zeros(5, dtype=np.int64), x_test=x), "y_test"),
        "negative": (npz_bytes(x=x, y=-np.ones(5, dtype=np.int64)), "negative"),
        "float labels": (npz_bytes(x=x, y=np.zeros(5)), "integers"),
        "truncated": (npz_bytes(x=x, y=np.zeros(5, dtype=np.int64))[:-40], "npz"),
        "encrypted": (encrypted_flag(buffer.getvalue()), "encrypted"),
        # numpy's archive["x"] opens a member "x" before "x.npy": the job read the NaN copy.
        # numpy's int64 product of this shape wraps to 0: a bare header matched it.
        "shape past int64": (_header_only_x((4, 2**62)), "needs 73786976294838206592 bytes"),
        "x beside x.npy": (_with_member(buffer.getvalue(), "x", nan_x),
                           "holds array 'x' twice (zip members 'x.npy' and 'x')"),
        "too many channels": (npz_bytes(x=np.zeros((5, 8, 8, 32), np.uint8),
                                        y=np.zeros(5, dtype=np.int64)), "channels"),
        "empty images": (npz_bytes(x=np.zeros((4, 0, 0, 1), np.uint8),
                                   y=np.zeros(4, dtype=np.int64)), "at least 8 pixels"),
        "int16 greyscale": (npz_bytes(x=np.zeros((5, 8, 8), np.int16),
                                      y=np.zeros(5, dtype=np.int64)), "uint8 or float"),
        "empty test split": (npz_bytes(x=x, y=np.zeros(5, dtype=np.int64), x_test=x[:0],
                                       y_test=np.zeros(0, dtype=np.int64)),
                             "'x_test' in empty test split.npz holds no examples"),
        "0/1 pixels as uint8": (npz_bytes(x=np.eye(8, dtype=np.uint8)[None].repeat(5, 0),
                                          y=np.zeros(5, dtype=np.int64)),
                                "uint8 images are read as value / 255"),
    }
    for name, (content, reason) in cases.items():
        response = upload(api, f"{name}.npz", content)
        assert response.status_code == 422, (name, response.text)
        error = error_of(response)
        assert error["code"] == "invalid_dataset" and error["field"] == "file"
        assert reason.lower() in error["message"].lower(), (name, error["message"])
    api.assert_nothing_stored()


def test_imagefolder_tar_upload(api: Api) -> None:
    members = {f"mydata/train/{cls}/{i}.png": png_bytes(value=i * 20)
               for cls in ("cat", "dog", "eel") for i in range(3)}
    members["mydata/test/cat/9.png"] = png_bytes()
    members["mydata/README.txt"] = b"hello"
    response = upload(api, "mydata.tgz", tar_bytes(members))
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["kind"] == "imagefolder"
    assert record["image_shape"] == [3, 10, 12]
    assert record["num_classes"] == 3

    flat = tar_bytes({f"{cls}/{i}.jpg": png_bytes() for cls in ("a", "b") for i in range(2)},
                     mode="w")
    response = upload(api, "flat.tar", flat)
    assert response.status_code == 201, response.text
    assert response.json()["num_classes"] == 2


def test_grey_imagefolder_tar_upload_records_one_channel(api: Api) -> None:
    members = {f"scans/train/{cls}/{i}.png": grey_png_bytes(value=i * 40, mode=mode)
               for cls, mode in (("ok", "L"), ("flawed", "I;16")) for i in range(3)}
    members["scans/val/ok/9.png"] = grey_png_bytes()
    response = upload(api, "scans.tgz", tar_bytes(members))
    assert response.status_code == 201, response.text
    assert response.json()["image_shape"] == [1, 10, 12]
    stored = api.client.get(f"/v1/datasets/{response.json()['id']}").json()
    assert stored["image_shape"] == [1, 10, 12]

    # One colour image in the held-out folder makes the whole tree RGB.
    members["scans/val/flawed/red.png"] = png_bytes()
    response = upload(api, "mixed.tgz", tar_bytes(members))
    assert response.status_code == 201, response.text
    assert response.json()["image_shape"] == [3, 10, 12]


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def test_unsafe_or_empty_tars_are_refused(api: Api) -> None:
    good = {"cat/1.png": png_bytes(), "dog/1.png": png_bytes()}
    cases = {
        "absolute": (tar_bytes({**good, "/etc/evil.png": png_bytes()}), "absolute"),
        "dotdot": (tar_bytes({**good, "cat/../../evil.png": png_bytes()}), "'..'"),
        "symlink": (tar_bytes(good, extra=[_link("cat/x.png", "/etc/passwd", tarfile.SYMTYPE)]),
                    "link"),
        "hardlink": (tar_bytes(good, extra=[_link("cat/y.png", "/etc/passwd", tarfile.LNKTYPE)]),
                     "link"),
        "device": (tar_bytes(good, extra=[_link("cat/dev", "", tarfile.CHRTYPE)]), "device"),
        "no images": (tar_bytes({"cat/readme.txt": b"x"}), "no image"),
        "images at top": (tar_bytes({"1.png": png_bytes()}), "class folders"),
        "not an archive": (b"just some text that is no archive" * 20, "neither"),
        "truncated gzip": (tar_bytes(good)[:60], "tar"),
    }
    for name, (content, reason) in cases.items():
        response = upload(api, f"{name}.tar", content)
        assert response.status_code == 422, (name, response.text)
        error = error_of(response)
        assert reason.lower() in error["message"].lower(), (name, error["message"])
        assert error["field"] == "file"
    api.assert_nothing_stored()


def test_layouts_users_make_are_refused_naming_what_to_change(api: Api) -> None:
    """Archives as users pack them, each accepted before and failed by the job (or refused for a
    missing npz key): 422 on ``file`` naming the folder or what to send, never a 500, also for a
    folder name that is not UTF-8 (a tar from a Latin-1 system)."""
    good = {f"{cls}/{i}.png": png_bytes(value=40 * i + 9 * n)
            for n, cls in enumerate(("cat", "dog")) for i in range(3)}
    latin1 = io.BytesIO()
    with tarfile.open(fileobj=latin1, mode="w", format=tarfile.USTAR_FORMAT,
                      encoding="latin-1") as archive:
        for name, data in good.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        empty = tarfile.TarInfo("caf\xe9")  # an empty class folder, named in Latin-1
        empty.type = tarfile.DIRTYPE
        archive.addfile(empty)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        for name, data in good.items():
            archive.writestr(f"data/{name}", data)
    cases = {
        "latin-1 empty class folder": (latin1.getvalue(), r"class folder 'caf\udce9' holds no"),
        "zipped tree": (zipped.getvalue(), "tar czf data.tgz"),
        "split folders": (tar_bytes({f"Training/{k}": v for k, v in good.items()}
                                    | {f"Testing/{k}": v for k, v in good.items()}),
                          "'Testing' holds folders"),
    }
    for name, (content, says) in cases.items():
        response = upload(api, "d.tgz", content)
        assert response.status_code == 422, (name, response.text)
        error = error_of(response)
        assert error["field"] == "file" and says in error["message"], (name, error)
    api.assert_nothing_stored()


def test_archive_and_pixel_bombs_are_refused_by_what_they_expand_to(api: Api) -> None:
    """An archive may unpack to 200 times its own size (50 MiB for one under 256 KiB), and its
    images decode to 5 times that. Before, the bound was 20 times MAX_DATASET_BYTES (160 GiB
    by default) whatever the file, and decoded pixels were not counted: both uploads below
    were accepted, and the job would have unpacked 80 MB, or decoded 324 MB, from < 100 kB."""
    from PIL import Image

    good = {f"train/{cls}/{i}.png": png_bytes(value=i * 20) for cls in ("a", "b") for i in range(3)}
    gzip_bomb = tar_bytes({**good, "train/notes.txt": bytes(80 * MIB)})
    assert len(gzip_bomb) < 256 * 1024
    response = upload(api, "bomb.tgz", gzip_bomb)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == "file"
    assert f"unpacks to more than the limit of {50 * MIB} bytes" in error["message"]

    buffer = io.BytesIO()
    Image.new("L", (9000, 9000), 7).save(buffer, format="PNG")  # 81 MB of pixels, ~100 kB
    big = buffer.getvalue()
    pixel_bomb = tar_bytes({f"train/{cls}/{i}.png": big for cls in ("a", "b") for i in range(2)})
    assert len(pixel_bomb) < 256 * 1024
    response = upload(api, "pixels.tgz", pixel_bomb)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == "file"
    assert f"decode to more than the limit of {250 * MIB} bytes" in error["message"]
    assert "9000×9000" in error["message"]
    api.assert_nothing_stored()


def test_a_real_sparse_data_set_compressing_21_times_is_accepted(api: Api) -> None:
    # Binary 28×28 images stored as float32 in a compressed npz unpack to about 21 times the
    # file: the first cut of the bomb bound (20 times) refused them.
    rng = np.random.default_rng(0)
    images = (rng.random((8000, 1, 28, 28)) > 0.8).astype(np.float32)
    content = npz_bytes(x=images, y=np.arange(8000) % 10)
    assert 20 * len(content) < images.nbytes and len(content) > MIB
    response = upload(api, "sparse.npz", content)
    assert response.status_code == 201, response.text


def test_over_size_dataset_is_413(api: Api) -> None:
    limit = api.settings.max_dataset_bytes
    response = upload(api, "big.npz", os.urandom(limit + MIB))
    assert response.status_code == 413
    assert str(limit) in error_of(response)["message"]
    api.assert_nothing_stored()


def test_builtin_and_unknown_datasets(api: Api) -> None:
    digits = api.client.get("/v1/datasets/digits")
    assert digits.status_code == 200
    assert digits.json()["kind"] == "builtin" and digits.json()["image_shape"] == [1, 8, 8]
    for dataset_id in ["imagenet", "0" * 32, "%00"]:
        missing = api.client.get(f"/v1/datasets/{dataset_id}")
        assert missing.status_code == 404 and error_of(missing)["field"] == "dataset_id"
