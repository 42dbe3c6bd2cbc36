"""The one compiled part of chatd: the sampling kernel (src/chatd/engine/_draw.c).

Everything else is declared in pyproject.toml. The flags keep the kernel's arithmetic
exactly as written (no FMA contraction, no fast-math), so a seed picks the same tokens
whichever CPU runs it; -fno-trapping-math only lets its branch-free loops vectorise.
"""

import sys

from setuptools import Extension, setup

# MSVC knows none of these flags (chatd is built and tested with GCC on Linux).
FLAGS = [] if sys.platform == "win32" else [
    "-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]

setup(
    ext_modules=[
        Extension(
            "chatd.engine._draw",
            sources=["src/chatd/engine/_draw.c"],
            extra_compile_args=FLAGS,
        )
    ]
)
