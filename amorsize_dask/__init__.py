"""amorsize for Dask: ``scheduler="amorsize"`` on one machine, sized batches on a cluster.

``import amorsize_dask`` registers the scheduler; ``amorsize_dask.map`` sends work sized by the
optimizer to a ``dask.distributed`` Client.
"""

from amorsize_dask.distributed import bag, batch_size, close_local_cluster, map
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
    "map",
    "register",
    "unregister",
]
