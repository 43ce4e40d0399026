"""cnnlab: CNN image experiments as YAML recipes."""

__version__ = "0.1.0"
