"""The project's test bed: N fake hosts on this machine, each with its own network, PID and mount
namespace and its own OpenSSH server (DESIGN.md section 5, docs/testbed.md).

Standard library only and independent of ``dynamo_launch``: tests and benchmarks import it,
``scripts/testbed`` (``python -m dltestbed``) is its command line.
"""

from .bed import (
                  DEFAULT_PREFIX,
                  DEFAULT_SUBNET,
                  Host,
                  TestBed,
                  TestBedError,
                  default_dir,
                  find_beds,
                  missing_prerequisites,
)

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_SUBNET",
    "Host",
    "TestBed",
    "TestBedError",
    "default_dir",
    "find_beds",
    "missing_prerequisites",
]
