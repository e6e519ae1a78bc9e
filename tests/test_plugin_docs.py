"""The worked examples of docs/plugins.md run as written: each plugin file
and its test, with the kit, in a pytest of their own. Also checks the
docs' promise that each fits in 30 lines."""

import pathlib
import re
import subprocess
import sys

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def examples():
    text = DOC.read_text()
    return dict(re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", text, re.S))


def test_every_hook_kind_has_an_example_of_at_most_30_lines():
    ex = examples()
    assert {"zone_first.py", "short_dns.py", "snat_by_destination.py"} <= set(ex)
    for name, body in ex.items():
        assert len(body.splitlines()) <= 30, name
        if not name.startswith("test_"):
            assert f"test_{name}" in ex, f"{name} has no test"


def test_the_examples_pass(tmp_path):
    for name, body in examples().items():
        (tmp_path / name).write_text(body)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 passed" in r.stdout, r.stdout
