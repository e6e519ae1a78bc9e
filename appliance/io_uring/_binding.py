"""The compiled AF_XDP shim (shares its types with the NAT core's module)."""

from __future__ import annotations

try:
    from ._io_c import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the AF_XDP shim is not built: run `pip install -e .` (needs libxdp-dev, "
                      "libbpf-dev, clang)") from exc

from ..__about__ import __version__

_built = ffi.string(lib.io_build_version()).decode()
if _built != __version__:  # pragma: no cover - depends on the install
    raise ImportError(f"stale AF_XDP shim: compiled for {_built}, package is {__version__}; "
                      "rebuild with `pip install -e .`")

COUNTER_NAMES: tuple[str, ...] = tuple(
    ffi.string(lib.io_counter_name(i)).decode().lower() for i in range(lib.io_counter_count()))
COUNTER_HELP: tuple[str, ...] = tuple(
    ffi.string(lib.io_counter_help(i)).decode() for i in range(lib.io_counter_count()))
# The XDP program's counters (bpf/steer_counters.def), by index in its map.
STEER_COUNTER_NAMES: tuple[str, ...] = tuple(
    ffi.string(lib.io_steer_counter_name(i)).decode().lower() for i in range(lib.io_steer_counter_count()))
