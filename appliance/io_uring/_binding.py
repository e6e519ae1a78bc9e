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

COUNTER_NAMES = (
    "rx", "tx", "to_kernel_local", "to_kernel_no_route", "to_kernel_no_neigh", "to_kernel_ttl",
    "to_kernel_mtu", "drop_nat", "drop_tx_full", "drop_kernel_write", "rx_batches", "fwd_cache_hit", "naps",
    "icmp_too_big", "icmp_time_exceeded", "drop_new_flow_busy",
    "icmp_no_route", "icmp_host_unreachable", "neigh_answered", "drop_blackhole",
)
assert len(COUNTER_NAMES) == lib.IO_C__COUNT, "io.h counters and COUNTER_NAMES disagree"
