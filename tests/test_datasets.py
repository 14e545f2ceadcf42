"""Dataset loaders on small files written here in the real formats: CIFAR python batches, a PNG folder, a zip."""

import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from msrepro.config import ConfigError
from msrepro.datasets import OfflineDataError, build_dataset
from msrepro.datasets.cifar10 import FOLDER, TEST_FILES, TRAIN_FILES

PER_BATCH = 3


def write_cifar(root, seed=0):
    """torchvision's layout: root/cifar-10-batches-py/{data_batch_1..5,test_batch}, pickles with bytes keys."""
    rng = np.random.default_rng(seed)
    folder = root / FOLDER
    folder.mkdir(parents=True)
    written = {}
    for name in TRAIN_FILES + TEST_FILES:
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=PER_BATCH).tolist()
        entry = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(PER_BATCH)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        written[name] = (data, labels)
    return written


def cifar(root, **kw):
    return build_dataset({"name": "cifar10", "root": str(root), "resolution": 32, **kw})


def test_cifar10_reads_python_batches_pixel_exact(tmp_path):
    written = write_cifar(tmp_path)
    ds = cifar(tmp_path, split="train", zero_one=True)
    assert len(ds) == 5 * PER_BATCH and ds.tensor().shape == (15, 3, 32, 32)
    data, labels = written["data_batch_2"]
    img = ds.tensor()[PER_BATCH + 1]  # second image of the second batch
    # the row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    for c, y, x in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert img[c, y, x].item() == pytest.approx(data[1, c * 1024 + y * 32 + x] / 255.0)
    assert ds.labels()[PER_BATCH:2 * PER_BATCH].tolist() == labels
    test = cifar(tmp_path, split="test")
    assert len(test) == PER_BATCH
    x = test.tensor()
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose((x[0] + 1) / 2, torch.from_numpy(written["test_batch"][0][0].reshape(3, 32, 32)) / 255.0)
    assert len(cifar(tmp_path, split="all")) == 6 * PER_BATCH


def test_cifar10_resize_keeps_mean(tmp_path):
    write_cifar(tmp_path)
    full = cifar(tmp_path, split="test", zero_one=True).tensor()
    small = build_dataset({"name": "cifar10", "root": str(tmp_path / FOLDER), "resolution": 16, "split": "test",
                           "zero_one": True}).tensor()  # root may also be the batches folder itself
    assert small.shape == (PER_BATCH, 3, 16, 16)
    # antialiased bilinear 2x downsampling averages 2x2 blocks: the image means agree
    assert torch.allclose(small.mean((2, 3)), full.mean((2, 3)), atol=2e-3)


def test_cifar10_offline_error_names_file_and_prefetch(tmp_path, monkeypatch):
    monkeypatch.setenv("MSREPRO_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(OfflineDataError) as exc:
        build_dataset({"name": "cifar10"})
    msg = str(exc.value)
    assert str(tmp_path / "nowhere" / FOLDER / "data_batch_1") in msg
    assert "msrepro prefetch cifar10" in msg


def test_prefetch_cifar10_writes_where_the_loader_reads(tmp_path, monkeypatch):
    """The prefetch target hands torchvision the data folder; the loader then finds the batches there."""
    import sys
    import types

    from msrepro.prefetch import prefetch

    calls = []

    class FakeTorchvisionCIFAR10:  # stands in for the network download only
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            from pathlib import Path
            if not (Path(root) / FOLDER).exists():
                write_cifar(Path(root))

    fake = types.ModuleType("torchvision.datasets")
    fake.CIFAR10 = FakeTorchvisionCIFAR10
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    monkeypatch.setenv("MSREPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MSREPRO_DATA", raising=False)
    out = prefetch("cifar10")
    assert out == tmp_path / "cache" / "data" / FOLDER
    assert {c[1] for c in calls} == {True, False} and all(c[2] for c in calls)
    assert len(build_dataset({"name": "cifar10", "resolution": 32})) == 5 * PER_BATCH  # default root


# -- CelebA-style images ---------------------------------------------------------------------------------
CENTER, BORDER = (10, 200, 30), (255, 255, 255)


def framed(w, h):
    """A w x h image whose centred min(w, h) square is CENTER and whose remaining strips are BORDER."""
    a = np.empty((h, w, 3), dtype=np.uint8)
    a[:] = BORDER
    s = min(w, h)
    top, left = (h - s) // 2, (w - s) // 2
    a[top:top + s, left:left + s] = CENTER
    return Image.fromarray(a)


def write_images(folder, sizes):
    folder.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        framed(w, h).save(folder / f"{i:06d}.png")


SIZES = [(60, 40), (40, 60), (45, 45), (64, 50)]


@pytest.mark.parametrize("resolution", [40, 16])
def test_image_folder_edm_convention_crops_the_centre_square(tmp_path, resolution):
    write_images(tmp_path / "celeba", SIZES)
    ds = build_dataset({"name": "image_folder", "root": str(tmp_path / "celeba"), "resolution": resolution,
                        "zero_one": True})
    x = ds.tensor()
    assert x.shape == (len(SIZES), 3, resolution, resolution)
    want = torch.tensor(CENTER, dtype=torch.float32).view(3, 1, 1) / 255.0
    assert torch.allclose(x, want.expand_as(x), atol=1.5 / 255), "white strips survived the centre crop"


def test_image_folder_ldm_convention_resizes_short_side_then_crops(tmp_path):
    write_images(tmp_path / "celeba", [(120, 80)])
    x = build_dataset({"name": "image_folder", "root": str(tmp_path / "celeba"), "resolution": 20,
                       "params": {"convention": "ldm"}}).images[0]
    want = torch.tensor(CENTER, dtype=torch.uint8).view(3, 1)
    # 80 -> 20 (x0.25): the strips become 5 px wide on each side and are cropped away; bicubic leaks <= 2 px
    assert torch.equal(x[:, :, 2:-2].reshape(3, -1), want.expand(3, 20 * 16))


def test_image_crop_param_and_limit(tmp_path):
    a = np.full((50, 50, 3), 255, dtype=np.uint8)
    a[15:35, 15:35] = CENTER  # only the central 20 x 20 is coloured
    (tmp_path / "imgs").mkdir()
    Image.fromarray(a).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(a).save(tmp_path / "imgs" / "b.jpg", quality=100)
    ds = build_dataset({"name": "image_folder", "root": str(tmp_path / "imgs"), "resolution": 10, "limit": 1,
                        "params": {"crop": 20}})
    assert len(ds) == 1
    assert (ds.images[0].int() - torch.tensor(CENTER).view(3, 1, 1)).abs().max() <= 1


def test_image_zip_matches_image_folder(tmp_path):
    write_images(tmp_path / "img_align_celeba", SIZES)
    with zipfile.ZipFile(tmp_path / "celeba.zip", "w") as z:
        for p in sorted((tmp_path / "img_align_celeba").iterdir()):
            z.write(p, f"img_align_celeba/{p.name}")
        z.writestr("img_align_celeba/readme.txt", "not an image")
    common = {"resolution": 16, "params": {"convention": "ldm"}}
    a = build_dataset({"name": "image_folder", "root": str(tmp_path / "img_align_celeba"), **common})
    b = build_dataset({"name": "image_zip", "root": str(tmp_path / "celeba.zip"), **common})
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8
    assert a.checksum() == b.checksum()
    assert torch.allclose(a.tensor(), a.images.float() / 127.5 - 1.0)


def test_image_splits(tmp_path):
    write_images(tmp_path / "f", SIZES)
    base = {"name": "image_folder", "root": str(tmp_path / "f"), "resolution": 8}
    tr = build_dataset({**base, "params": {"test_fraction": 0.25}})
    te = build_dataset({**base, "split": "test", "params": {"test_fraction": 0.25}})
    allx = build_dataset({**base, "split": "all"})
    assert (len(tr), len(te), len(allx)) == (3, 1, 4)
    assert torch.equal(torch.cat([tr.images, te.images]), allx.images)
    with pytest.raises(ConfigError, match="test_fraction"):
        build_dataset({**base, "split": "test"})
    with pytest.raises(ConfigError, match="allowed: edm, ldm"):
        build_dataset({**base, "params": {"convention": "pil"}})


@pytest.mark.parametrize("name,default", [("image_folder", "img_align_celeba"), ("image_zip", "img_align_celeba.zip")])
def test_image_datasets_offline_errors(tmp_path, monkeypatch, name, default):
    monkeypatch.setenv("MSREPRO_DATA", str(tmp_path))
    with pytest.raises(OfflineDataError) as exc:
        build_dataset({"name": name})
    msg = str(exc.value)
    assert str(tmp_path / default) in msg and "dataset.root" in msg and "CelebA" in msg
