"""After training: a run's network, its activity on fresh trials, and the analyses of ``nn4n-analyze``."""
from .runs import activity_from_run, load_run, neurons

__all__ = ["activity_from_run", "load_run", "neurons"]
