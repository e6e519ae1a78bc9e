"""The compiled fast path, checked against this package's version.

A module compiled from another checkout (or before a `git pull`) would run C
that does not match the Python around it; refuse to import it instead.
"""

from __future__ import annotations

from ..__about__ import __version__

try:
    from ._nat_c import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "the NAT fast path is not built: run `pip install -e .` "
        "(or `./dev test`) in the project root"
    ) from exc

_built = ffi.string(lib.nat_build_version()).decode()
if _built != __version__:  # pragma: no cover - depends on the install
    raise ImportError(
        f"stale NAT fast path: compiled for {_built}, package is {__version__}; "
        "rebuild with `pip install -e .`"
    )

COUNTER_NAMES: tuple[str, ...] = tuple(
    ffi.string(lib.nat_counter_name(i)).decode().lower() for i in range(lib.nat_counter_count())
)
COUNTER_HELP: tuple[str, ...] = tuple(
    ffi.string(lib.nat_counter_help(i)).decode() for i in range(lib.nat_counter_count())
)
COUNTER_INDEX: dict[str, int] = {name: i for i, name in enumerate(COUNTER_NAMES)}

__all__ = ["ffi", "lib", "COUNTER_NAMES", "COUNTER_HELP", "COUNTER_INDEX"]
