"""The NAT core's C under AddressSanitizer and UndefinedBehaviorSanitizer
(issue 15): a copy built apart with APPLIANCE_SANITIZE (appliance/nat/
_build.py), loaded in place of the normal module in a Python with the ASan
runtime preloaded, runs the differential fuzz corpus; any finding aborts
the process. A positive control makes sure the sanitizer is really there:
a frame whose length runs past its buffer is caught."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FRAMES = int(os.environ.get("APPLIANCE_SANITIZE_FRAMES", "30000"))

# Loads the sanitized module as appliance.nat._nat_c, then runs the code in argv[2].
PRELUDE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("appliance.nat._nat_c", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["appliance.nat._nat_c"] = mod
import appliance.nat._binding as b
assert b.lib is mod.lib, "the normal module was loaded"
maps = open("/proc/self/maps").read()
assert "libasan" in maps and "libubsan" in maps, "the sanitizers' runtimes are not loaded"
exec(sys.argv[2])
"""

FUZZ = """
from appliance import fuzz
r = fuzz.run({frames}, seed=11, exact=True)
print(r.frames, len(r.mismatches))
assert not r.mismatches, str(r.mismatches[0])
"""

OVERFLOW = """
from appliance.nat import Batch, NatCore
from appliance._config import parse_config
from appliance._plugins import Plugins
from appliance.fuzz._corpus import CONFIG
core = NatCore(parse_config(CONFIG, "t"), Plugins(entry_points=False, first_party=False))
b = Batch(1, exact=True)
b.load([(bytes(12) + b"\\x08\\x00" + b"\\x45\\x00\\x00\\x28\\x00\\x00", core.port("eth0"), 1000.0)])
b.frames[0].len = 60          # 40 bytes past the frame's own allocation
core.process(b, 1000.0)
print("not caught")
"""


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    out = tmp_path_factory.mktemp("asan")
    env = dict(os.environ, APPLIANCE_SANITIZE="address,undefined")
    build = ("import importlib.util, sys\n"
             "spec = importlib.util.spec_from_file_location('nat_build', sys.argv[1])\n"
             "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
             "print(m.ffibuilder.compile(tmpdir=sys.argv[2]))\n")
    r = subprocess.run([sys.executable, "-c", build, str(ROOT / "appliance/nat/_build.py"), str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    so = r.stdout.strip().splitlines()[-1]
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    assert os.path.isabs(libasan), "gcc has no libasan (Debian: libasan8, pulled in by gcc)"
    return so, libasan


def _run(sanitized, code: str) -> subprocess.CompletedProcess:
    so, libasan = sanitized
    # PYTHONMALLOC=malloc: every allocation, not only cffi's, from malloc,
    # which ASan bounds (pymalloc's pools hide a read past a small object)
    env = dict(os.environ, LD_PRELOAD=libasan, PYTHONMALLOC="malloc",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=66",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=67")
    return subprocess.run([sys.executable, "-P", "-c", PRELUDE, so, code], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)


def test_the_fuzz_corpus_runs_clean_under_asan_and_ubsan(sanitized):
    r = _run(sanitized, FUZZ.format(frames=FRAMES))
    assert r.returncode == 0, r.stderr[-4000:]
    frames, mismatches = map(int, r.stdout.split())
    assert frames == FRAMES and mismatches == 0


def test_the_sanitizer_catches_a_read_past_a_frame(sanitized):
    r = _run(sanitized, OVERFLOW)
    assert r.returncode == 66, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "heap-buffer-overflow" in r.stderr or "buffer-overflow" in r.stderr, r.stderr[-2000:]
    assert "not caught" not in r.stdout
