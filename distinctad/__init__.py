"""DistinctAD: ``distinctad.train``, ``distinctad.data`` and ``distinctad.eval``."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait at a barrier sleep instead of spinning (unless the user chose otherwise). Read once, when
# torch loads its OpenMP runtime, so it is set here: every entry point imports distinctad before torch. With one
# other busy core, a spinning thread pool made a Stage-II step 5-40x slower; sleeping, ~1.1-1.9x
# (benchmarks/threads_contention.py). On a dedicated machine the two policies run at the same speed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
