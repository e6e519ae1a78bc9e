"""cffi build script for packet I/O: the forwarding step (``c/``) and the
backends' ports (``xdp/c/``: AF_XDP; ``uring/c/``: io_uring; ``mmap/c/``:
PACKET_MMAP rings), one module,
and the XDP program (clang).

Links libxdp, libbpf and liburing (Debian: libxdp-dev, libbpf-dev,
liburing-dev). The cdef is the
CFFI-BEGIN/CFFI-END part of io.h; it includes the NAT core's cdef so a
``struct nat_frame`` batch passes between the two modules unchanged.
The XDP program is compiled with ``clang -target bpf`` into
``appliance/io_uring/xdp/steer.bpf.o`` as part of the build.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent


def _load_nat_build():
    """The NAT core's build script, as a module of its own (it is a file
    beside this one, not an importable package at build time)."""
    spec = importlib.util.spec_from_file_location("appliance_nat_build", HERE.parent / "nat" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nat_build = _load_nat_build()

C_DIR = HERE / "c"
XDP_DIR = HERE / "xdp"
BACKEND_C_DIRS = [XDP_DIR / "c", HERE / "uring" / "c", HERE / "mmap" / "c"]
NAT_C_DIR = HERE.parent / "nat" / "c"
BPF_DIR = XDP_DIR / "bpf"
BPF_SRC = BPF_DIR / "steer.bpf.c"
BPF_OBJ = XDP_DIR / "steer.bpf.o"


def _rel(path: pathlib.Path) -> str:
    return os.path.relpath(path, os.getcwd())


def build_bpf() -> None:
    arch_inc = f"/usr/include/{os.uname().machine}-linux-gnu"
    cmd = ["clang", "-O2", "-g", "-target", "bpf", "-Wall", f"-I{arch_inc}", f"-I{BPF_DIR}",
           "-c", str(BPF_SRC), "-o", str(BPF_OBJ)]
    subprocess.run(cmd, check=True)


def _counters_enum() -> str:
    """enum io_counter for the cdef, from io_counters.def: cffi checks each
    value against the compiler's (io.h builds the same enum from the file)."""
    names = re.findall(r"^_\((\w+),", (C_DIR / "io_counters.def").read_text(), re.M)
    return "enum io_counter {\n" + "".join(f"    IO_C_{n},\n" for n in names) + "    IO_C__COUNT\n};\n"


def _cdef() -> str:
    header = (C_DIR / "io.h").read_text()
    body = re.search(r"/\* CFFI-BEGIN \*/(.*)/\* CFFI-END \*/", header, re.S).group(1)
    body = body.replace("/* IO_COUNTERS: the enum io_counter, generated from io_counters.def */", _counters_enum())
    steer = re.findall(r"^#define (STEER_\w+) ", (BPF_DIR / "steer.h").read_text(), re.M)
    body = body.replace("/* STEER_DEFINES: bpf/steer.h's constants, generated; values from the compiler */",
                        "".join(f"#define {name} ...\n" for name in steer))
    return re.sub(r"/\*.*?\*/", "", body, flags=re.S)


build_bpf()
ffibuilder = FFI()
ffibuilder.include(nat_build.ffibuilder)
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "appliance.io_uring._io_c",
    '#include "io.h"\n',
    # one object per file (io.h lists them)
    sources=[_rel(p) for d in (C_DIR, *BACKEND_C_DIRS) for p in sorted(d.glob("*.c"))],
    include_dirs=[_rel(C_DIR), _rel(NAT_C_DIR), _rel(BPF_DIR)],
    libraries=["xdp", "bpf", "uring", "pthread"],
    define_macros=[("IO_BUILD_VERSION", '"%s"' % nat_build._version())],
    depends=[_rel(p) for d in (C_DIR, *BACKEND_C_DIRS) for p in sorted(d.iterdir())]
    + [_rel(p) for p in sorted(BPF_DIR.glob("*.[hd]*"))],
    # -flto: the per-packet calls between the files inline as within one
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-flto", "-pthread"],
    extra_link_args=["-flto", "-O2", "-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
