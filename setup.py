"""chatd's compiled parts: the sampling kernel (src/chatd/engine/_draw.c) and the native
loop that runs a lone sequence's steps with it (_solo.c); both include _kernel.h.

Everything else is declared in pyproject.toml. The flags keep the kernel's arithmetic
exactly as written (no FMA contraction, no fast-math), so a seed picks the same tokens
whichever CPU runs it; -fno-trapping-math only lets its branch-free loops vectorise.
"""

import sys

from setuptools import Extension, setup

# MSVC knows none of these flags (chatd is built and tested with GCC on Linux).
FLAGS = [] if sys.platform == "win32" else [
    "-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]

KERNEL = ["src/chatd/engine/_kernel.h"]
EXTENSIONS = [Extension("chatd.engine._draw", sources=["src/chatd/engine/_draw.c"],
                        depends=KERNEL, extra_compile_args=FLAGS)]
# The native loop uses pthreads, an eventfd and perf_counter's Linux clock; elsewhere
# the engine steps every sequence in Python (engine/solo.py).
if sys.platform.startswith("linux"):
    EXTENSIONS.append(Extension("chatd.engine._solo", sources=["src/chatd/engine/_solo.c"],
                                depends=KERNEL, extra_compile_args=FLAGS))

setup(ext_modules=EXTENSIONS)
