"""Training objectives (DomainBed's contract), found by name in `ALGORITHMS`.

Importing this package registers every built-in algorithm (each module registers its classes with
@ALGORITHMS.register()); `get_algorithm_class` also imports the user's modules ($DRECYCLE_PLUGINS).
"""

from domainbed_recycle.algorithms import coral, erm, group_dro, iga, mixup, swad, vrex  # noqa: F401
from domainbed_recycle.algorithms.base import ALGORITHMS, Algorithm
from domainbed_recycle.registry import import_plugins

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm_class"]


def get_algorithm_class(name: str) -> type[Algorithm]:
    """The class registered as `name`, after importing every module named in $DRECYCLE_PLUGINS
    (comma-separated, importable from sys.path): user code outside the package registers its
    algorithms there. Pool and Slurm workers inherit the variable, so they import the modules too
    when they build their run's algorithm."""
    import_plugins()
    return ALGORITHMS.get(name)
