"""domainbed-recycle: a DomainBed-style benchmark harness for model recycling.

Importing the package is cheap on purpose: torch and friends are imported by the modules
that need them, so the CLI and the results collector start fast.
"""

__version__ = "0.1.0"
