"""Build the native core.

simdjson is compiled from the ``simdjson.h``/``simdjson.cpp`` that the pysimdjson wheel
ships (a build requirement), found here at build time and never vendored. Cython
directives are set once, here. ``ADJOBS_DEBUG=1`` turns the checks back on and builds
with ``-O0 -g`` and line tracing.
"""

import importlib.util
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup


def simdjson_sources() -> Path:
    """Directory of the simdjson amalgamation inside the installed pysimdjson."""
    spec = importlib.util.find_spec("simdjson")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("adjobs needs pysimdjson at build time (it ships simdjson's sources)")
    for location in spec.submodule_search_locations:
        folder = Path(location)
        if (folder / "simdjson.h").is_file() and (folder / "simdjson.cpp").is_file():
            return folder
    raise SystemExit("pysimdjson is installed but does not ship simdjson.h/simdjson.cpp")


DEBUG = os.environ.get("ADJOBS_DEBUG") == "1"
SIMDJSON = simdjson_sources()

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": False,  # keep Python's floor semantics for // and % on C integers
    "embedsignature": True,
    "linetrace": DEBUG,
}
# Portable flags only: simdjson picks its SIMD kernel at run time.
compile_args = ["-std=c++17"] + (["-O0", "-g"] if DEBUG else ["-O3"])
macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []

extension = Extension(
    "adjobs._core",
    sources=["src/adjobs/_core.pyx", str(SIMDJSON / "simdjson.cpp")],
    include_dirs=["ext", str(SIMDJSON)],
    language="c++",
    extra_compile_args=compile_args,
    define_macros=macros,
)


def c_extension(name: str) -> Extension:
    """A plain C kernel (no simdjson) with the same directives and debug switch as _core."""
    return Extension(
        f"adjobs.{name}",
        sources=[f"src/adjobs/{name}.pyx"],
        language="c",
        extra_compile_args=(["-O0", "-g"] if DEBUG else ["-O3"]),
        define_macros=macros,
    )


# The time-series model kernel (adjobs.model), the normaliser's bucket-by-bucket state
# walk (adjobs.scoring) and the grouping of records by small integer keys (adjobs.features).
kernels = [c_extension("_model"), c_extension("_normaliser"), c_extension("_grouping")]
# The JSON text of result documents (adjobs.results): C++17 for std::to_chars, which writes
# floats' shortest digits (ext/adjobs_float.h).
kernels.append(Extension(
    "adjobs._jsontext",
    sources=["src/adjobs/_jsontext.pyx"],
    include_dirs=["ext"],
    depends=["ext/adjobs_float.h"],
    language="c++",
    extra_compile_args=compile_args,
    define_macros=macros,
))

setup(ext_modules=cythonize([extension, *kernels], compiler_directives=directives))
