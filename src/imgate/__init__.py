"""imgate: an IM gateway with a goim-compatible edge and a Cython/C hot path."""

import os

__version__ = "0.1.0"


def get_include() -> str:
    """The folder of the C headers that the ``.pxd`` files extern: add it to ``include_dirs`` when
    compiling a module that cimports ``imgate.core``."""
    return os.path.join(os.path.dirname(__file__), "_core", "includes")
