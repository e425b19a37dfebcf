"""amorsize for Dask: ``scheduler="amorsize"`` on one machine, sized batches on a cluster.

``import amorsize_dask`` registers the scheduler; ``amorsize_dask.map``/``imap``/``imap_unordered``
stream work sized for a ``dask.distributed`` cluster to it.
"""

from amorsize_dask.distributed import (
    bag,
    batch_size,
    close_local_cluster,
    imap,
    imap_unordered,
    map,
)
from amorsize_dask.registration import SCHEDULER_NAME, register, unregister
from amorsize_dask.scheduler import ClientBypassedWarning, get

register()

__all__ = [
    "SCHEDULER_NAME",
    "ClientBypassedWarning",
    "bag",
    "batch_size",
    "close_local_cluster",
    "get",
    "imap",
    "imap_unordered",
    "map",
    "register",
    "unregister",
]
