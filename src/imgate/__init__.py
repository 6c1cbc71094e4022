"""imgate: an IM gateway with a goim-compatible edge and a Cython/C hot path."""

__version__ = "0.1.0"
