"""scaling-study: plan, run, resume and fit compute-scaling studies of MLPs."""

__version__ = "0.1.0"
