"""pytest configuration for the whole tree (tests/, and the doctests of pkmodel/ and docs/).

pkmodel's matrices are small (tens of states): one BLAS thread is fastest, and a multi-threaded
OpenBLAS spinning on a loaded machine made the fitting tests about 100x slower (docs/performance.md,
"BLAS threads").  The fits and the CLI limit the threads themselves; this does it for every test.
"""

import numpy  # noqa: F401  (load the BLAS library, so that the limit below applies to it)
from threadpoolctl import threadpool_limits

_BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")
