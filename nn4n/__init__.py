"""nn4n: biologically plausible recurrent networks (E/I, multi-area CTRNNs) for neuroscience."""
from .ensemble import Ensemble
from .model import CTRNN, Activity
from .structure import Area, Density, Init, InputGroup, NetworkConfig, Noise, Plasticity, Structure

__all__ = ["CTRNN", "Activity", "Area", "Density", "Ensemble", "Init", "InputGroup", "NetworkConfig", "Noise",
           "Plasticity", "Structure"]
