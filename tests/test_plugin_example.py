"""The out-of-tree example plugin package (examples/appliance-plugin-example):
installed (into a directory of its own, so the rest of the suite does not
load it), found through its entry point, and its own tests pass with the kit."""

import os
import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "appliance-plugin-example"


def test_installed_example_is_loaded_by_entry_point_and_its_tests_pass(tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(EXAMPLE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[translation]]\nproto = "tcp"\nvip = "30.0.0.2"\nport = 80\nselector = "round-robin"\n'
                   'backends = ["->20.0.0.1 80"]\n')
    r = subprocess.run([sys.executable, "-m", "appliance", "check-config", str(cfg)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0 and "entrypoint:example" in r.stdout, r.stdout + r.stderr
    # without the package the selector is unknown: the entry point is what provides it
    r = subprocess.run([sys.executable, "-m", "appliance", "check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1 and "unknown selector 'round-robin'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout + r.stderr
