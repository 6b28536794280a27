"""Readers for the official raw formats, each returning one domain split as an ``ImageSet``.

Readers take explicit file paths; where files live (mirror, download cache) is the acquisition
layer's business. Every failure on missing, corrupt or unexpected input is a one-line
``DataError`` naming the file, what is wrong and the fix.
"""

from splitmix.data.sources.cifar10 import read_cifar10_pickles
from splitmix.data.sources.domainnet import DOMAINNET_SITES, load_split_list, read_domainnet
from splitmix.data.sources.fedbn import (
    FEDBN_DIGITS_FOLDERS,
    FEDBN_PARTS,
    fedbn_cut_parts,
    fedbn_part_sizes,
    load_fedbn_pickle,
    read_fedbn_digits,
)
from splitmix.data.sources.image_tree import read_image_tree
from splitmix.data.sources.mnist import read_mnist_idx
from splitmix.data.sources.mnist_m import read_mnist_m
from splitmix.data.sources.svhn import read_digits_mat
from splitmix.data.sources.transform import fedbn_train_test_split, resize, take, to_rgb
from splitmix.data.sources.usps import read_usps_h5, read_usps_libsvm

__all__ = [
    "DOMAINNET_SITES",
    "FEDBN_DIGITS_FOLDERS",
    "FEDBN_PARTS",
    "fedbn_cut_parts",
    "fedbn_part_sizes",
    "fedbn_train_test_split",
    "load_fedbn_pickle",
    "load_split_list",
    "read_cifar10_pickles",
    "read_digits_mat",
    "read_domainnet",
    "read_fedbn_digits",
    "read_image_tree",
    "read_mnist_idx",
    "read_mnist_m",
    "read_usps_h5",
    "read_usps_libsvm",
    "resize",
    "take",
    "to_rgb",
]
