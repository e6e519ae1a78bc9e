"""The XDP steering program's maps, loaded into the kernel (not attached)."""

from __future__ import annotations

import ipaddress
import logging

import pytest

pytestmark = pytest.mark.root


def _flags(st, addr) -> int | None:
    from appliance.io_uring._binding import ffi, lib
    from appliance.io_uring.xdp._steering import _key_addr
    v = ffi.new("uint32_t *")
    return v[0] if lib.io_map_lookup(st.maps["addrs"], _key_addr(addr), v) == 0 else None


def test_vips_beyond_the_address_map_are_left_out_with_one_warning(caplog):
    from appliance.io_uring.xdp._steering import ADDR_HOST, ADDR_NAT, Steering
    st = Steering()
    host = {ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("10.0.0.1")}
    base = int(ipaddress.ip_address("10.64.0.0"))
    vips = {ipaddress.ip_address(base + i) for i in range(70000)} | {ipaddress.ip_address("10.0.0.1")}
    with caplog.at_level(logging.WARNING, logger="appliance.steering"):
        st.set_addresses(host, vips)
        st.set_addresses(host, vips)    # again: no second warning
    assert _flags(st, "192.0.2.1") == ADDR_HOST
    assert _flags(st, "10.0.0.1") == ADDR_HOST | ADDR_NAT    # a host address that is also SNAT's
    assert len(st.addr_flags) == 65536                       # STEER_MAX_ADDRS
    warnings = [r for r in caplog.records if "address map full" in r.getMessage()]
    assert len(warnings) == 1 and "4466 vip/SNAT addresses" in warnings[0].getMessage(), warnings
    # fewer vips: the stale entries go, and all of the new ones fit
    few = {ipaddress.ip_address(base + 69990 + i) for i in range(10)}
    st.set_addresses(host, few)
    assert all(_flags(st, a) == ADDR_NAT for a in few)
    assert _flags(st, ipaddress.ip_address(base)) is None
    assert _flags(st, "10.0.0.1") == ADDR_HOST and len(st.addr_flags) == 12
