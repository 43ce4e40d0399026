"""Loss landscapes (seed 004; Li et al. 2017): filter-normalized directions, 1-D and 2-D
surfaces filled in place and saved as they go, flatness in numbers, and their pictures."""

from cnnlab.landscape.command import landscape
from cnnlab.landscape.surface import Settings, Surface

__all__ = ["Settings", "Surface", "landscape"]
