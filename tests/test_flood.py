"""A SYN flood against a full session table, live (issue 15): spoofed-source
SYNs at the vip, far more than the slow path admits and over a hundred
times the table, while an iperf3 transfer, a keep-alive request loop and a
new connection every 50 ms use the same vip (appliance/_bench_flood.py,
which `appliance bench flood` runs against nftables too).

The bounds are below what BENCHMARKS.md records on this 2-CPU machine,
where the flood's generator, iperf3's two ends, the worker and the slow
path share two CPUs: the transfer's loss of throughput is the slow path's
CPU (it resolves some 50 thousand flood flows a second), not lost frames."""

from __future__ import annotations

import pytest

from appliance import _bench_flood

pytestmark = pytest.mark.root

TABLE = 8192
FLOOD_S = 5.0


def test_established_flows_and_new_connections_survive_a_syn_flood():
    f = _bench_flood.Flood(TABLE, pre=3.0, flood=FLOOD_S, post=8.0)
    try:
        f.start("appliance")
        try:
            r = f.measure("appliance")
        finally:
            f.stop("appliance")
    finally:
        f.close()

    # The flood was one: well over the new-flow capacity and 10x the table.
    assert r["syns"] > 10 * TABLE and r["flood_pps"] > 50_000, r
    assert r["evicted_half_open"] > 10 * TABLE, r        # the flood filled the table, over and over
    assert r["table_max_sessions"] >= 0.9 * TABLE * 15 / 16, r
    # Established flows lost nothing: the transfer never stalled nor failed,
    # no keep-alive request failed, none waited as long as a SYN retry.
    assert r["transfer_complete"] and r["transfer_stalled_intervals"] == 0, r
    assert r["keepalive_failures"] == 0 and r["keepalive_requests_during"] > 20, r
    assert r["keepalive_max_gap_ms"] < 1000, r
    assert r["transfer_ratio"] >= 0.25, r                  # measured 0.37-0.51
    # New connections got through during the flood (measured: all of them).
    assert r["new_connections_during"] > 40, r
    assert r["new_connections_ok_ratio"] >= 0.8, r
    # The table came back: no more tentative sessions than before the flood
    # within 10 s of its end (the scanner ends tentative sessions idle 5 s
    # while under pressure).
    assert r["recovery_s"] is not None and r["recovery_s"] <= 10, r
