"""What datasets exist: their domains (in the paper's order), classes and model input size.

This is the single list every other data module consults; an unknown dataset or domain is a
one-line ``DataError`` listing the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitmix.errors import DataError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    domains: tuple[str, ...]  # paper's domain order (clients are domain-major in this order)
    image_size: int  # side of the square model input the prepared cache is resized to
    num_classes: int = 10
    bundled: bool = False  # shipped inside the package (the embedded default)
    description: str = ""


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            "digits",
            ("mnist", "svhn", "usps", "synth", "mnistm"),
            28,
            description="Digits (FedBN): MNIST, SVHN, USPS, SynthDigits, MNIST-M at 28x28",
        ),
        DatasetSpec(
            "domainnet",
            ("real", "clipart", "infograph", "painting", "quickdraw", "sketch"),
            256,
            description="DomainNet, FedBN's 10 classes, 6 domains, 256x256",
        ),
        DatasetSpec("cifar10", ("cifar10",), 32, description="CIFAR-10, 32x32"),
        DatasetSpec(
            "digits-mini",
            ("mnist", "usps", "mnistm"),
            28,
            bundled=True,
            description="bundled: real MNIST, USPS, MNIST-M subsets at 28x28",
        ),
        DatasetSpec(
            "cifar10-mini",
            ("cifar10",),
            32,
            bundled=True,
            description="bundled: real CIFAR-10 (JPEG copy) subset at 32x32",
        ),
    ]
}

DOMAINNET_CLASSES = (
    "bird",
    "feather",
    "headphones",
    "ice_cream",
    "teapot",
    "tiger",
    "whale",
    "windmill",
    "wine_glass",
    "zebra",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}"
        ) from None


def check_domain(dataset: str, domain: str) -> None:
    spec = get_dataset(dataset)
    if domain not in spec.domains:
        raise DataError(
            f"unknown domain {domain!r} for dataset {dataset!r}; "
            f"its domains are: {', '.join(spec.domains)}"
        )
