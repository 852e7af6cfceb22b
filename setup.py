"""The one compiled part of ndd: the CPU CSR product of the spectral solver (src/ndd/spectral/_kernels.c).

Everything else is in pyproject.toml. ``optional=True``: without a C compiler the install still
succeeds (with a warning) and ndd runs torch's own operations instead (slower, the same results to rounding).
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3"]
setup(ext_modules=[Extension("ndd.spectral._kernels", ["src/ndd/spectral/_kernels.c"], extra_compile_args=flags,
                             optional=True)])
