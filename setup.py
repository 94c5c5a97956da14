"""Build the Cython extensions in ext/ into the packages that use them.

ext/_lmdb.pyx becomes mykey.index._lmdb (the LMDB binding) and ext/_framing.pyx
becomes mykey.log._framing (batch framing); each has a pure-Python twin beside it.
MYKEY_ONLY_EXT=_lmdb,_framing restricts the build to those modules (handy while
one is being edited).
"""
import os
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
# Where each extension lives, and the system libraries it links against.
PACKAGES = {"_lmdb": "mykey.index", "_framing": "mykey.log"}
LIBRARIES = {"_lmdb": ["lmdb"], "_framing": ["z", "crypto"]}


def extensions() -> list:
    from Cython.Build import cythonize

    only = {n for n in os.environ.get("MYKEY_ONLY_EXT", "").split(",") if n}
    exts = []
    for pyx in sorted((HERE / "ext").glob("_*.pyx")):
        name = pyx.stem
        if only and name not in only:
            continue
        exts.append(
            Extension(
                f"{PACKAGES[name]}.{name}",
                [str(pyx.relative_to(HERE))],
                libraries=LIBRARIES.get(name, []),
                extra_compile_args=["-O3"],
            )
        )
    return cythonize(
        exts,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
        quiet=True,
    )


setup(ext_modules=extensions())
