"""Build the Cython extensions in ext/ as mykey._<name> modules.

Every ext/_<name>.pyx becomes mykey._<name>. MYKEY_ONLY_EXT=_lmdb,_framing
restricts the build to those modules (handy while one is being edited).
"""
import os
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
# System libraries each extension links against.
LIBRARIES = {"_lmdb": ["lmdb"], "_framing": ["z"]}


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
                f"mykey.{name}",
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
