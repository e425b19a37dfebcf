"""joblib backend "amorsize": ``import amorsize_joblib`` registers it, then
``with joblib.parallel_config(backend="amorsize"): Parallel(n_jobs=-1)(...)`` runs joblib (and
scikit-learn's ``n_jobs``) on amorsize's shared warm pools with optimizer-chosen batch sizes.
"""

from amorsize_joblib.backend import AmorsizeBackend

BACKEND_NAME = "amorsize"


def register(make_default: bool = False) -> None:
    """Register the backend under "amorsize" (again: idempotent). ``make_default=True`` also
    makes it joblib's default, so plain ``Parallel(n_jobs=-1)`` uses it without a context."""
    from joblib import register_parallel_backend

    register_parallel_backend(BACKEND_NAME, AmorsizeBackend, make_default=make_default)


register()

__all__ = ["BACKEND_NAME", "AmorsizeBackend", "register"]
