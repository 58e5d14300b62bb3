"""scaling-study: plan, run, resume and fit compute-scaling studies of MLPs."""

import os

__version__ = "0.1.0"

# Read by torch's OpenMP runtime (libgomp) when torch loads, so it is set before any module of
# ours imports torch. A thread that has finished its share of a parallel operation spins
# 1,000 times (libgomp's own choice when it knows it has more threads than cores) instead of
# 300,000 before it sleeps: on a CPU whose cores other processes share, the long spins take the
# cores from the threads still working, and a training step on 2 threads took 5-10 times as
# long (benchmarks/demo_time.py). The work is split among the threads as before, so results
# are bit for bit the same. A value the user set, or OMP_WAIT_POLICY, is left alone.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
