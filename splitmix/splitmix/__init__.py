"""Split-Mix (Hong et al., ICLR 2022), in one place: the federated method (``algorithm``), its
model of independent bases (``ensemble``), the batched training of a client's bases
(``fused``) and the fused ensembles of fast evaluation (``inference``). Importing this package
registers the method as ``splitmix``."""

from splitmix.splitmix.algorithm import CyclicShuffleSampler, SplitMix, count_bases
from splitmix.splitmix.ensemble import Ensemble, bases_for_width, build_ensemble
from splitmix.splitmix.fused import FusedBases, check_fusable

__all__ = [
    "CyclicShuffleSampler",
    "Ensemble",
    "FusedBases",
    "SplitMix",
    "bases_for_width",
    "build_ensemble",
    "check_fusable",
    "count_bases",
]
