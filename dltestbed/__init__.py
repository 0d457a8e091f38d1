"""The project's test bed: N fake hosts on this machine, each with its own network, PID and mount
namespace and its own OpenSSH server (DESIGN.md section 5, docs/testbed.md).

Standard library only and independent of ``dynamo_launch``: tests and benchmarks import it,
``scripts/testbed`` (``python -m dltestbed``) is its command line.
"""

from . import bed
from .bed import *  # noqa: F403  (the library's public names, listed in bed.__all__)

__all__ = list(bed.__all__)
