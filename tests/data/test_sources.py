"""Raw-format readers: real mirror files, round trips on official-format fixtures, bad input."""

from __future__ import annotations

import bz2
import gzip
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from sklearn.model_selection import StratifiedShuffleSplit

from splitmix.data.catalog import CIFAR10_CLASSES, DOMAINNET_CLASSES
from splitmix.data.imageset import ImageSet
from splitmix.data.sources import (
    fedbn_cut_parts,
    fedbn_part_sizes,
    fedbn_train_test_split,
    read_cifar10_pickles,
    read_digits_mat,
    read_domainnet,
    read_fedbn_digits,
    read_image_tree,
    read_mnist_idx,
    read_mnist_m,
    read_usps_h5,
    read_usps_libsvm,
    resize,
    to_rgb,
)
from splitmix.data.sources.mnist import IDX_LABELS_MAGIC, read_idx
from splitmix.errors import DataError

from .fixtures import (
    pil_luma,
    write_cifar10_image_tree,
    write_cifar10_pickles_tar,
    write_domainnet_tree,
    write_fedbn_digits,
    write_image_tree,
    write_mnist_idx,
    write_mnist_m_tar,
    write_svhn_mat,
    write_usps_h5,
    write_usps_libsvm,
)


def assert_same(got: ImageSet, want: ImageSet) -> None:
    assert got.images.shape == want.images.shape
    assert got.images.dtype == np.uint8 and got.labels.dtype == np.int64
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.images, want.images)


def assert_data_error(excinfo: pytest.ExceptionInfo[DataError], path: Path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "\r" not in msg
    assert str(path) in msg
    return msg


# ----------------------------------------------------------------------- real files (the mirror)

MNIST_TRAIN_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
USPS_TRAIN_HIST = [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
USPS_TEST_HIST = [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]


def test_mirror_mnist(mirror: Path) -> None:
    d = mirror / "mnist"
    train = read_mnist_idx(d / "train-images-idx3-ubyte.gz", d / "train-labels-idx1-ubyte.gz")
    test = read_mnist_idx(d / "t10k-images-idx3-ubyte.gz", d / "t10k-labels-idx1-ubyte.gz")
    assert train.images.shape == (60000, 28, 28, 1) and len(test) == 10000
    assert train.class_counts() == MNIST_TRAIN_HIST
    assert test.class_counts() == MNIST_TEST_HIST
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert train.images.mean() / 255 == pytest.approx(0.13066, abs=5e-6)
    assert train.images.std() / 255 == pytest.approx(0.30811, abs=5e-6)
    assert test.images.mean() / 255 == pytest.approx(0.13251, abs=5e-6)


def test_mirror_usps_h5_and_libsvm(mirror: Path) -> None:
    h5 = mirror / "usps" / "usps.h5"
    train, test = read_usps_h5(h5, "train"), read_usps_h5(h5, "test")
    assert train.images.shape == (7291, 16, 16, 1) and len(test) == 2007
    assert train.class_counts() == USPS_TRAIN_HIST
    assert test.class_counts() == USPS_TEST_HIST
    assert train.images.min() == 0 and train.images.max() == 255  # data spans [0, 1]
    libsvm = read_usps_libsvm(mirror / "usps" / "usps.t.bz2")
    assert libsvm.images.shape == (2007, 16, 16, 1)
    np.testing.assert_array_equal(libsvm.labels, test.labels)  # same images, same order


def test_mirror_mnist_m_labels_follow_mnist(mirror: Path) -> None:
    tar = mirror / "mnist_m" / "mnist_m.tar.gz"
    train, test = read_mnist_m(tar, "train"), read_mnist_m(tar, "test")
    assert train.images.shape == (10000, 32, 32, 3) and test.images.shape == (2000, 32, 32, 3)
    assert train.class_counts() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert test.class_counts() == [175, 234, 219, 207, 217, 179, 178, 205, 192, 194]
    mnist_train = read_idx(mirror / "mnist" / "train-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC, 1)
    mnist_test = read_idx(mirror / "mnist" / "t10k-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC, 1)
    np.testing.assert_array_equal(train.labels, mnist_train[:10000])
    np.testing.assert_array_equal(test.labels, mnist_test[:2000])


def _member_pixels(tar: Path, names: list[str]) -> list[np.ndarray]:
    """Decode the named members straight from the archive (one stream pass, no reader code)."""
    found = {}
    with tarfile.open(tar, "r|gz") as tf:
        for member in tf:
            if member.name in names:
                found[member.name] = np.asarray(Image.open(tf.extractfile(member)).convert("RGB"))
    return [found[n] for n in names]


def test_mirror_cifar_jpeg_test_split(mirror: Path) -> None:
    tar = mirror / "cifar10" / "cifar-10-images.tar.gz"
    test = read_image_tree(tar, "test", CIFAR10_CLASSES)
    assert test.images.shape == (10000, 32, 32, 3)
    assert test.class_counts() == [1000] * 10
    assert np.all(np.diff(test.labels) >= 0)  # ordered by class index
    first, last = _member_pixels(
        tar, ["cifar-10-images/test/airplane/0000.jpg", "cifar-10-images/test/truck/0999.jpg"]
    )
    np.testing.assert_array_equal(test.images[0], first)
    np.testing.assert_array_equal(test.images[-1], last)


def test_mirror_cifar_jpeg_train_split(mirror: Path) -> None:
    # ~7 s on one core (50,000 JPEG decodes), under the 15 s bar for the fast suite
    train = read_image_tree(mirror / "cifar10" / "cifar-10-images.tar.gz", "train", CIFAR10_CLASSES)
    assert train.images.shape == (50000, 32, 32, 3)
    assert train.class_counts() == [5000] * 10


# ----------------------------------------------------------------- round trips on tiny fixtures


def test_mnist_idx_round_trip_gzip_and_raw(tmp_path: Path) -> None:
    img, lab, want = write_mnist_idx(tmp_path, 12, prefix="t10k")
    assert img.name == "t10k-images-idx3-ubyte.gz"
    assert_same(read_mnist_idx(img, lab), want)
    raw_img, raw_lab = tmp_path / "raw-images", tmp_path / "raw-labels"
    raw_img.write_bytes(gzip.decompress(img.read_bytes()))
    raw_lab.write_bytes(gzip.decompress(lab.read_bytes()))
    assert_same(read_mnist_idx(raw_img, raw_lab), want)


@pytest.mark.parametrize("sparse", [False, True])
def test_usps_libsvm_scaling_matches_fedbn(tmp_path: Path, sparse: bool) -> None:
    path = tmp_path / "usps.bz2"
    want, values = write_usps_libsvm(path, 15, sparse=sparse)
    got = read_usps_libsvm(path)
    assert_same(got, want)
    # from first principles: v=-1 -> 0, v=0 -> 127.5 truncated to 127, v=1 -> 255
    assert got.images[0, 0, :3, 0].tolist() == [0, 127, 255]
    assert np.all(got.images[:, 0, 5, 0] == 127)  # written as 0.0 or omitted (libsvm: 0.0)
    assert np.all(np.abs(got.images[..., 0].reshape(15, 256) - (values + 1) * 127.5) < 1)


def test_usps_h5_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "usps.h5"
    want = write_usps_h5(path, 11, 7)
    assert_same(read_usps_h5(path, "train"), want["train"])
    assert_same(read_usps_h5(path, "test"), want["test"])


@pytest.mark.parametrize("synth", [False, True])
def test_digits_mat_round_trip_label_10_is_zero(tmp_path: Path, synth: bool) -> None:
    path = tmp_path / ("synth_train_32x32.mat" if synth else "train_32x32.mat")
    want = write_svhn_mat(path, 12, synth=synth)
    raw_y = scipy.io.loadmat(path)["y"].ravel()
    assert (10 in raw_y) != synth  # SVHN stores zero as 10, SynthDigits as 0
    got = read_digits_mat(path)
    assert_same(got, want)
    assert set(got.labels.tolist()) == set(range(10))


def test_cifar10_pickles_round_trip_and_chw_layout(tmp_path: Path) -> None:
    path = tmp_path / "cifar-10-python.tar.gz"
    want = write_cifar10_pickles_tar(path, 4)
    train, test = read_cifar10_pickles(path, "train"), read_cifar10_pickles(path, "test")
    assert_same(train, want["train"])
    assert_same(test, want["test"])
    assert len(train) == 20
    with tarfile.open(path) as tf:
        raw = pickle.load(tf.extractfile("cifar-10-batches-py/data_batch_1"), encoding="bytes")
    row = raw[b"data"][0]  # 1024 red (row-major), then 1024 green, then 1024 blue
    np.testing.assert_array_equal(train.images[0, :, :, 0].ravel(), row[:1024])
    np.testing.assert_array_equal(train.images[0, :, :, 2].ravel(), row[2048:])
    # an extracted folder reads the same
    with tarfile.open(path) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    assert_same(read_cifar10_pickles(tmp_path / "x", "test"), want["test"])


def test_image_tree_tar_and_dir_round_trip(tmp_path: Path) -> None:
    want = write_cifar10_image_tree(tmp_path / "tree.tar.gz", 2)
    write_cifar10_image_tree(tmp_path / "tree", 2, as_tar=False)
    for source in (tmp_path / "tree.tar.gz", tmp_path / "tree"):
        for split in ("train", "test"):
            got = read_image_tree(source, split, CIFAR10_CLASSES)
            assert_same(got, want[split])
    assert want["train"].labels.tolist() == [c for c in range(10) for _ in range(2)]


def test_image_tree_jpeg_and_unknown_class(tmp_path: Path) -> None:
    want = write_image_tree(tmp_path / "j.tar.gz", 1, fmt="JPEG", splits=("test",))
    assert_same(read_image_tree(tmp_path / "j.tar.gz", "test", CIFAR10_CLASSES), want["test"])
    with pytest.raises(DataError) as excinfo:
        read_image_tree(tmp_path / "j.tar.gz", "test", CIFAR10_CLASSES[:9])
    assert "truck" in assert_data_error(excinfo, tmp_path / "j.tar.gz")


@pytest.mark.parametrize("as_dir", [False, True])
def test_mnist_m_follows_label_file_order(tmp_path: Path, as_dir: bool) -> None:
    path = tmp_path / ("mm" if as_dir else "mnist_m.tar.gz")
    want = write_mnist_m_tar(path, 12, 5, as_dir=as_dir)
    got = read_mnist_m(path, "train")
    assert_same(got, want["train"])
    assert_same(read_mnist_m(path, "test"), want["test"])
    # label-file order (the fixture shuffles the lines), checked against the file itself
    if as_dir:
        text = (path / "mnist_m" / "mnist_m_train_labels.txt").read_text()
        png = Image.open(path / "mnist_m" / "mnist_m_train" / text.split()[0])
    else:
        with tarfile.open(path) as tf:
            text = tf.extractfile("mnist_m/mnist_m_train_labels.txt").read().decode()
            png = Image.open(tf.extractfile("mnist_m/mnist_m_train/" + text.split()[0]))
            png.load()
    assert text.split()[0] != "00000000.png" or text.split()[2] != "00000001.png"
    assert got.labels[0] == int(text.split()[1])
    np.testing.assert_array_equal(got.images[0], np.asarray(png))


def test_fedbn_digits_parts_and_test(tmp_path: Path) -> None:
    want = write_fedbn_digits(tmp_path, "USPS", part_size=3, test_size=4, float_labels=True)
    domain = tmp_path / "USPS"
    train = read_fedbn_digits(domain, "train")
    assert_same(train, want["train"])
    assert train.images.shape == (30, 16, 16, 1)
    assert_same(read_fedbn_digits(domain, "test"), want["test"])
    three = read_fedbn_digits(domain, "train", parts=3)
    assert_same(three, ImageSet(want["train"].images[:9], want["train"].labels[:9]))
    assert fedbn_part_sizes(domain) == [3] * 10
    rgb = write_fedbn_digits(tmp_path, "MNIST_M", part_size=2)
    assert_same(read_fedbn_digits(tmp_path / "MNIST_M", "test"), rgb["test"])
    assert read_fedbn_digits(tmp_path / "MNIST_M", "train").images.shape == (20, 28, 28, 3)


def test_fedbn_recipe_split_and_parts() -> None:
    rng = np.random.default_rng(3)
    n = 103
    pool = ImageSet(
        rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)
    )
    train, test = fedbn_train_test_split(pool)
    assert len(test) == 21 and len(train) == 82  # sklearn: n_test = ceil(0.2 n)
    # same indices as FedBN's call, which passes the images themselves as X
    sss = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    tr_idx, te_idx = next(sss.split(pool.images.reshape(n, -1), pool.labels))
    np.testing.assert_array_equal(train.images, pool.images[tr_idx])
    np.testing.assert_array_equal(test.labels, pool.labels[te_idx])
    assert sorted(np.concatenate([tr_idx, te_idx]).tolist()) == list(range(n))
    parts = fedbn_cut_parts(train)
    assert [len(p) for p in parts] == [8] * 10  # 82 // 10, the last 2 dropped as FedBN does
    np.testing.assert_array_equal(parts[1].labels, train.labels[8:16])


def test_resize_and_to_rgb() -> None:
    rng = np.random.default_rng(0)
    gray = ImageSet(rng.integers(0, 256, (3, 16, 16, 1), dtype=np.uint8), np.arange(3))
    assert resize(gray, 16) is gray
    big = resize(gray, 28)
    assert big.images.shape == (3, 28, 28, 1) and big.images.dtype == np.uint8
    np.testing.assert_array_equal(big.labels, gray.labels)
    ref = Image.fromarray(gray.images[1, :, :, 0]).resize((28, 28), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(big.images[1, :, :, 0], np.asarray(ref))
    flat = ImageSet(np.full((2, 32, 32, 3), (10, 200, 77), dtype=np.uint8), np.arange(2))
    small = resize(flat, 28)  # a constant image stays constant under any averaging filter
    assert np.all(small.images == np.array([10, 200, 77], dtype=np.uint8))
    rgb = to_rgb(gray)
    assert rgb.images.shape == (3, 16, 16, 3)
    assert all(np.array_equal(rgb.images[..., c], gray.images[..., 0]) for c in range(3))
    assert to_rgb(rgb) is rgb


def _expected_resized(rgb: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb, "RGB").resize((size, size), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("as_zip", [False, True])
def test_domainnet_with_split_lists(tmp_path: Path, as_zip: bool) -> None:
    lists = tmp_path / "lists"
    fx = write_domainnet_tree(tmp_path / "dn", ["clipart"], as_zip=as_zip, split_lists=lists)
    for split in ("train", "test"):
        got = read_domainnet(tmp_path / "dn", "clipart", split, size=20, split_lists=lists)
        order = fx.lists[("clipart", split)]
        assert got.images.shape == (len(order), 20, 20, 3)
        assert got.labels.tolist() == [fx.images[r][0] for r in order]
        for i, rel in enumerate(order):
            np.testing.assert_array_equal(got.images[i], _expected_resized(fx.images[rel][1], 20))


def test_domainnet_fedbn_band_rule_makes_rgba_gray(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    fx = write_domainnet_tree(
        tmp_path, ["sketch"], classes=("bird",), n_per_class=4, split_lists=lists
    )
    rel = "sketch/bird/sketch_002.png"  # the fixture's third kind is RGBA; even index -> train
    rgba = np.asarray(Image.open(tmp_path / rel))
    assert rgba.shape[2] == 4
    got = read_domainnet(tmp_path, "sketch", "train", size=8, split_lists=lists, classes=("bird",))
    i = fx.lists[("sketch", "train")].index(rel)
    gray = np.repeat(pil_luma(rgba[..., :3])[..., None], 3, axis=2)  # 601-2 luma, alpha ignored
    np.testing.assert_array_equal(got.images[i], _expected_resized(gray, 8))


def test_domainnet_seeded_split_without_lists(tmp_path: Path) -> None:
    write_domainnet_tree(tmp_path / "d", ["real"], n_per_class=5)
    write_domainnet_tree(tmp_path / "z", ["real"], n_per_class=5, as_zip=True)
    train = read_domainnet(tmp_path / "d", "real", "train", size=12)
    test = read_domainnet(tmp_path / "d", "real", "test", size=12)
    assert train.class_counts() == [4] * 10 and test.class_counts() == [1] * 10  # round(3.5) = 4
    assert_same(read_domainnet(tmp_path / "z", "real", "train", size=12), train)
    assert_same(read_domainnet(tmp_path / "d", "real", "train", size=12), train)
    pool = {img.tobytes() for img in train.images} | {img.tobytes() for img in test.images}
    assert len(pool) == 50  # disjoint, together every image


# --------------------------------------------------------------------------- corrupt or missing


def test_truncated_gzip(tmp_path: Path) -> None:
    img, lab, _ = write_mnist_idx(tmp_path, 10)
    img.write_bytes(img.read_bytes()[: len(img.read_bytes()) // 2])
    with pytest.raises(DataError) as excinfo:
        read_mnist_idx(img, lab)
    assert "gzip" in assert_data_error(excinfo, img)


def test_wrong_idx_magic_names_the_swap(tmp_path: Path) -> None:
    img, lab, _ = write_mnist_idx(tmp_path, 10)
    with pytest.raises(DataError) as excinfo:
        read_mnist_idx(lab, img)
    assert "0x00000801" in assert_data_error(excinfo, lab)


def test_idx_truncated_body(tmp_path: Path) -> None:
    img, lab, _ = write_mnist_idx(tmp_path, 10)
    img.write_bytes(gzip.compress(gzip.decompress(img.read_bytes())[:-5]))
    with pytest.raises(DataError) as excinfo:
        read_mnist_idx(img, lab)
    assert_data_error(excinfo, img)


def test_mat_without_x(tmp_path: Path) -> None:
    path = tmp_path / "test_32x32.mat"
    scipy.io.savemat(path, {"y": np.ones((3, 1), np.uint8)})
    with pytest.raises(DataError) as excinfo:
        read_digits_mat(path)
    assert "X" in assert_data_error(excinfo, path)


def test_mnist_m_tar_missing_label_file(tmp_path: Path) -> None:
    path = tmp_path / "mnist_m.tar.gz"
    write_mnist_m_tar(path, 4, 3, omit=["mnist_m_train_labels.txt"])
    assert len(read_mnist_m(path, "test")) == 3
    with pytest.raises(DataError) as excinfo:
        read_mnist_m(path, "train")
    assert "mnist_m_train_labels.txt" in assert_data_error(excinfo, path)


def test_mnist_m_png_and_label_must_pair(tmp_path: Path) -> None:
    path = tmp_path / "mnist_m.tar.gz"
    write_mnist_m_tar(path, 4, 3, omit=["mnist_m_train/00000002.png"])
    with pytest.raises(DataError) as excinfo:
        read_mnist_m(path, "train")
    assert "00000002.png" in assert_data_error(excinfo, path)
    folder = tmp_path / "dir"
    write_mnist_m_tar(folder, 4, 3, as_dir=True)
    shutil.copy(folder / "mnist_m/mnist_m_test/00000000.png", folder / "mnist_m/mnist_m_test/x.png")
    with pytest.raises(DataError) as excinfo:
        read_mnist_m(folder, "test")
    assert "x.png" in assert_data_error(excinfo, folder)


def test_cifar_tar_missing_batch_and_corrupt_archive(tmp_path: Path) -> None:
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar10_pickles_tar(path, 2)
    small = tmp_path / "small.tar.gz"
    with tarfile.open(path) as src, tarfile.open(small, "w:gz") as dst:
        for m in src.getmembers():
            if not m.name.endswith("data_batch_3"):
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    with pytest.raises(DataError) as excinfo:
        read_cifar10_pickles(small, "train")
    assert "data_batch_3" in assert_data_error(excinfo, small)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError) as excinfo:
        read_cifar10_pickles(path, "test")
    assert_data_error(excinfo, path)


def test_corrupt_bz2_and_pickle(tmp_path: Path) -> None:
    bad = tmp_path / "usps.t.bz2"
    bad.write_bytes(bz2.compress(b"1 1:0.5\n")[:20])
    with pytest.raises(DataError) as excinfo:
        read_usps_libsvm(bad)
    assert_data_error(excinfo, bad)
    write_fedbn_digits(tmp_path, "MNIST", part_size=2)
    part = tmp_path / "MNIST" / "partitions" / "train_part4.pkl"
    part.write_bytes(part.read_bytes()[:50])
    with pytest.raises(DataError) as excinfo:
        read_fedbn_digits(tmp_path / "MNIST", "train")
    assert_data_error(excinfo, part)


def test_undecodable_image_names_member(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_cifar10_image_tree(root, 1, as_tar=False)
    victim = root / "cifar-10-images" / "test" / "cat" / "0000.png"
    victim.write_bytes(b"not a png")
    with pytest.raises(DataError) as excinfo:
        read_image_tree(root, "test", CIFAR10_CLASSES)
    assert "cat/0000.png" in assert_data_error(excinfo, root)


MISSING_CALLS = {
    "mnist": lambda p: read_mnist_idx(p, p),
    "usps_libsvm": read_usps_libsvm,
    "usps_h5": lambda p: read_usps_h5(p, "train"),
    "mat": read_digits_mat,
    "mnist_m": lambda p: read_mnist_m(p, "train"),
    "cifar_pickles": lambda p: read_cifar10_pickles(p, "train"),
    "image_tree": lambda p: read_image_tree(p, "train", CIFAR10_CLASSES),
    "fedbn": lambda p: read_fedbn_digits(p, "train"),
    "domainnet": lambda p: read_domainnet(p, "real", "train", size=8),
}


@pytest.mark.parametrize("reader", sorted(MISSING_CALLS))
def test_missing_input_is_one_line_data_error(tmp_path: Path, reader: str) -> None:
    missing = tmp_path / "nothing-here"
    with pytest.raises(DataError) as excinfo:
        MISSING_CALLS[reader](missing)
    assert_data_error(excinfo, missing)


def test_bad_split_name(tmp_path: Path) -> None:
    path = tmp_path / "usps.h5"
    write_usps_h5(path, 2, 2)
    with pytest.raises(DataError) as excinfo:
        read_usps_h5(path, "val")
    assert "'val'" in assert_data_error(excinfo, path)


def test_domainnet_split_list_label_outside_classes(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    write_domainnet_tree(tmp_path / "dn", ["real"], split_lists=lists, n_per_class=1)
    with pytest.raises(DataError) as excinfo:
        read_domainnet(
            tmp_path / "dn",
            "real",
            "train",
            size=8,
            split_lists=lists,
            classes=DOMAINNET_CLASSES[1:],
        )
    assert "bird" in assert_data_error(excinfo, lists / "real_train.pkl")
