"""The run directory format (``docs/run-format.md``): one torch-free owner of its version, paths, columns,
statuses, atomic writes, locking and path confinement, shared by the ``mscl`` writer and the ``workbench`` reader.

Submodules: ``layout`` (format version, artifact paths, checkpoint sets), ``columns`` (table columns and
JSON keys), ``status`` (``RunStatus``), ``atomic`` (the atomic writer), ``lock`` (``RunLock``), ``names``
(run names), ``rundir`` (opening a run for writing), ``errors``.
"""

from runformat.errors import RunExistsError, RunFormatError, RunLockedError, RunNameError
from runformat.layout import FORMAT_VERSION, READABLE_FORMAT_VERSIONS
from runformat.status import RunStatus

__all__ = [
    "FORMAT_VERSION",
    "READABLE_FORMAT_VERSIONS",
    "RunExistsError",
    "RunFormatError",
    "RunLockedError",
    "RunNameError",
    "RunStatus",
]
