"""Registry garbage collector: reclaims registry metadata and storage as soon as it is garbage."""

__version__ = "0.1.0"
