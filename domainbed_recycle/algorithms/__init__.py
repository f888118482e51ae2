"""Training objectives (DomainBed's contract), found by name in `ALGORITHMS`.

Importing this package registers every built-in algorithm.
"""

from domainbed_recycle.algorithms.base import ALGORITHMS, Algorithm, get_algorithm_class

# Each import registers its classes with @ALGORITHMS.register().
from domainbed_recycle.algorithms import erm  # noqa: E402,F401  isort: skip

for _optional in ("coral", "group_dro", "mixup", "vrex", "swad"):
    try:
        __import__(f"domainbed_recycle.algorithms.{_optional}")
    except ModuleNotFoundError as _error:
        if _error.name != f"domainbed_recycle.algorithms.{_optional}":
            raise

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm_class"]
