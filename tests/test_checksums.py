"""Property: every checksum the NAT rewrites equals a full recomputation of
the translated packet (built independently with dpkt)."""

import ipaddress

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from packets import Harness, eth, ip, l4

v4 = st.integers(0x0B000001, 0x0BFFFFFE).map(lambda i: str(ipaddress.IPv4Address(i)))
v6 = st.integers(1, 2**64).map(lambda i: str(ipaddress.IPv6Address((0x10 << 112) | i)))
port = st.integers(1, 65535)
payload = st.binary(max_size=64)


def conf(vip, vport, proto, bdst, bport, bsrc=None):
    left = bsrc or ""
    return f"""
[[translation]]
proto = "{proto}"
vip = "{vip}"
port = {vport}
backends = ["{left}->{bdst} {bport}"]
"""


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([4, 6]), st.sampled_from(["tcp", "udp"]), st.data(), port, port, port, payload,
       st.booleans())
def test_rewritten_checksums_equal_full_recomputation(family, proto, data, sport, vport, bport, body, rewrite_src):
    addr = v4 if family == 4 else v6
    client, vip, backend, new_src = (data.draw(addr) for _ in range(4))
    assume(len({client, vip, backend, new_src}) == 4)
    h = Harness(conf(vip, vport, proto, backend, bport, new_src if rewrite_src else None))
    src_out = new_src if rewrite_src else client
    h.send(eth(ip(client, vip, l4(proto, sport, vport, body))))
    h.expect(eth(ip(src_out, backend, l4(proto, sport, bport, body))))
    h.send(eth(ip(backend, src_out, l4(proto, bport, sport, body))))
    h.expect(eth(ip(vip, client, l4(proto, vport, sport, body))))
