"""Not part of the package: makes ``import nn4n`` work from the folder that holds this checkout.

A checkout named ``nn4n`` shadows the installed package there (Python takes it for a namespace package,
``cannot import name 'CTRNN' from 'nn4n'``): a script saved beside the checkout, or a SLURM job submitted
from that folder. Found first, this file loads the package in ``nn4n/`` in its place.
"""
import importlib.util
import os
import sys

_spec = importlib.util.spec_from_file_location(
    __name__, os.path.join(os.path.dirname(__file__), "nn4n", "__init__.py"),
    submodule_search_locations=[os.path.join(os.path.dirname(__file__), "nn4n")])
sys.modules[__name__] = _module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
