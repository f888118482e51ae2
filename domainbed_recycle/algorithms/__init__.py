"""Training objectives (DomainBed's contract), found by name in `ALGORITHMS`.

Importing this package registers every built-in algorithm (each import registers its classes with
@ALGORITHMS.register()).
"""

from domainbed_recycle.algorithms import coral, erm, group_dro, mixup, swad, vrex  # noqa: F401
from domainbed_recycle.algorithms.base import ALGORITHMS, Algorithm, get_algorithm_class

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm_class"]
