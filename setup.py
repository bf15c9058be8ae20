"""Build the Cython kernels in ``cext/`` into ``dipengine._libs``.

Every ``cext/<name>.pyx`` becomes ``dipengine._libs.<name>``. Environment switches:

- ``DIPENGINE_OPENMP=0``       build without OpenMP
- ``DIPENGINE_CYTHON_DEBUG=1`` bounds and wraparound checks back on
- ``DIPENGINE_EXT=a,b``        build only these modules (parallel development)
- ``CYTHON_ANNOTATE=1``        write the ``.html`` annotation
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

openmp = os.environ.get("DIPENGINE_OPENMP", "1") != "0"
debug = os.environ.get("DIPENGINE_CYTHON_DEBUG", "0") == "1"
only = {s for s in os.environ.get("DIPENGINE_EXT", "").split(",") if s}

compile_args = ["-O3"]
link_args = []
if openmp:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

extensions = []
for path in sorted(glob.glob(os.path.join("cext", "*.pyx"))):
    name = os.path.splitext(os.path.basename(path))[0]
    if only and name not in only:
        continue
    extensions.append(
        Extension(
            f"dipengine._libs.{name}",
            [path],
            include_dirs=[np.get_include(), "cext"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    )

directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": debug,
    "initializedcheck": debug,
    "cdivision": True,
    "embedsignature": True,
}

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        include_path=["cext"],
        annotate=os.environ.get("CYTHON_ANNOTATE", "0") == "1",
    )
)
