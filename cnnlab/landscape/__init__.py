"""Loss landscapes (seed 004; Li et al. 2017): filter-normalized directions, 1-D and 2-D
surfaces filled in place and saved as they go, and flatness in numbers. Their pictures are
figures (`cnnlab/viz/landscape_plots.py`); `cnnlab/landscape_runs.py` computes them for runs."""

from cnnlab.landscape.surface import Settings, Surface

__all__ = ["Settings", "Surface"]
