"""Only the optional C extension lives here; everything else is in pyproject.toml.

`_shmalloc` lets process workers build large numpy arrays straight in shared memory. It is
optional: without a C compiler the install still succeeds and workers copy large arrays into
shared memory instead (correct, slower for big batches).
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux") or sys.platform == "darwin":
    ext_modules.append(Extension("prefetch.engine._shmalloc", ["prefetch/engine/_shmalloc.c"], optional=True))

setup(ext_modules=ext_modules)
