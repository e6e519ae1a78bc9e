"""cffi build script for the NAT fast path (API mode, compiled at install).

The C lives in plain files under ``appliance/nat/c/``; the cdef is the part of
``nat.h`` between the CFFI-BEGIN/CFFI-END markers, so the header is the one
source of truth and cffi checks every struct field offset against the
compiler. The package version is baked in and checked at import
(``appliance/nat/_binding.py``) so a stale build fails loudly.

``APPLIANCE_SANITIZE=address,undefined`` (any -fsanitize= list) builds it
with those sanitizers, every finding fatal, for tests only: Python itself
is not built with them, so the process needs the ASan runtime preloaded
(tests/test_sanitizers.py builds such a copy apart and runs the
differential fuzz through it).
"""

from __future__ import annotations

import os
import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
C_DIR = HERE / "c"


SANITIZE = os.environ.get("APPLIANCE_SANITIZE", "")
if SANITIZE:
    _opt = ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={SANITIZE}", "-fno-sanitize-recover=all"]
    _link = [f"-fsanitize={SANITIZE}"]
else:
    # -flto: the per-packet helpers called across the files inline as they
    # did in one file (bench core's fastpath_pps would tell otherwise)
    _opt, _link = ["-O2", "-flto"], ["-O2", "-flto"]


def _version() -> str:
    text = (HERE.parent / "__about__.py").read_text()
    match = re.search(r'__version__ = "([^"]+)"', text)
    assert match, "appliance/__about__.py has no __version__"
    return match.group(1)


def _cdef() -> str:
    header = (C_DIR / "nat.h").read_text()
    match = re.search(r"/\* CFFI-BEGIN \*/(.*)/\* CFFI-END \*/", header, re.S)
    assert match, "nat.h lost its CFFI-BEGIN/CFFI-END markers"
    body = match.group(1)
    # cffi's parser wants no comments
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    return body


def _rel(path: pathlib.Path) -> str:
    # setuptools insists on paths relative to setup.py (the working
    # directory); a sanitized copy is compiled in a directory of its own
    return str(path) if SANITIZE else os.path.relpath(path, os.getcwd())


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "appliance.nat._nat_c",
    '#include "nat.h"\n',
    sources=[_rel(p) for p in sorted(C_DIR.glob("*.c"))],   # one object per file
    include_dirs=[_rel(C_DIR)],
    depends=[_rel(p) for p in sorted(C_DIR.iterdir())],
    define_macros=[("NAT_BUILD_VERSION", '"%s"' % _version())],
    extra_compile_args=[*_opt, "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    extra_link_args=_link,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
