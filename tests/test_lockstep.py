"""C and Python agree: verdicts, flags, struct layouts, counters; the public
names are pinned."""

import re
import pathlib

import appliance
import appliance.nat
from appliance.nat import _core
from appliance.nat._binding import COUNTER_NAMES, ffi, lib

C_DIR = pathlib.Path(appliance.__file__).parent / "nat" / "c"


def test_struct_layouts():
    assert ffi.sizeof("struct nat_key") == 40
    assert ffi.offsetof("struct nat_key", "sport") == 32
    assert ffi.offsetof("struct nat_key", "proto") == 36
    assert ffi.offsetof("struct nat_key", "family") == 37
    # the session stays small: bytes_per_session target is 512
    assert lib.nat_sizeof_session() <= 160


def test_verdicts_match():
    from appliance.nat import Verdict

    assert [(v.name, int(v)) for v in Verdict] == [("FORWARD", 0), ("PASS", 1), ("DROP", 2), ("MISS", 3)]
    assert Verdict.MISS == lib.NAT_MISS and Verdict.FORWARD == lib.NAT_FORWARD
    from appliance._types import NO_BACKEND

    assert NO_BACKEND == lib.NAT_NO_BACKEND
    # one name per meaning: the core's verdicts are not exported under the hooks' names
    assert not hasattr(appliance.nat, "DROP") and not hasattr(appliance.nat, "FORWARD")


def test_counter_names_come_from_the_def_file():
    names = re.findall(r"^_\((\w+),", (C_DIR / "nat_counters.def").read_text(), re.M)
    assert "DROP_NO_BACKEND" in names and len(names) > 20, "the scan found no counters"
    assert [n.lower() for n in names] == list(COUNTER_NAMES)
    # every reason the slow path uses exists in C
    src = (pathlib.Path(_core.__file__)).read_text()
    reasons = re.findall(r'_slow_verdict\(f, [\w.]+, "(\w+)"\)', src)
    assert "drop_source_range" in reasons and "drop_no_backend" in reasons
    for reason in reasons:
        assert reason in COUNTER_NAMES, reason


def test_build_version_matches_package():
    assert ffi.string(lib.nat_build_version()).decode() == appliance.__version__


def test_public_names():
    assert {n for n in dir(appliance) if not n.startswith("_")} >= {
        "Config", "ConfigError", "load_config", "parse_config"}
    assert {n for n in appliance.nat.__dict__ if not n.startswith("_") and n[0].isupper()} == {
        "Verdict", "Batch", "NatCore", "Lane", "Statistics", "Backend", "BackendSet", "Flow",
        "SessionInfo", "Timeouts", "Translation"}


def test_io_shim_matches_package_and_counters():
    from appliance.io_uring._binding import COUNTER_NAMES as IO_NAMES
    from appliance.io_uring._binding import ffi as io_ffi
    from appliance.io_uring._binding import lib as io_lib

    assert io_ffi.string(io_lib.io_build_version()).decode() == appliance.__version__
    from appliance.io_uring._binding import STEER_COUNTER_NAMES

    io_dir = pathlib.Path(appliance.__file__).parent / "io_uring"
    listed = re.findall(r"^_\((\w+),", (io_dir / "c" / "io_counters.def").read_text(), re.M)
    assert "RX" in listed and "NEW_FLOW_QUEUED" in listed, "the scan found no counters"
    assert [n.lower() for n in listed] == list(IO_NAMES)
    assert [getattr(io_lib, "IO_C_" + n) for n in listed] == list(range(len(listed))) and io_lib.IO_C__COUNT == len(listed)
    steer = re.findall(r"^_\((\w+),", (io_dir / "xdp" / "bpf" / "steer_counters.def").read_text(), re.M)
    assert [n.lower() for n in steer] == list(STEER_COUNTER_NAMES) and "held" in STEER_COUNTER_NAMES
    # the NAT frame passes between the two modules unchanged
    assert io_ffi.sizeof("struct nat_frame") == ffi.sizeof("struct nat_frame")
