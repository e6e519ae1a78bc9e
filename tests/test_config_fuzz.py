"""Generated invalid configurations: each is one ``FILE:LINE: key: reason``
line naming the line of what was broken, never a traceback (issue 15).

A valid base document is broken in one place at a time: a value of the
wrong type, an unknown key (unicode ones too), a number out of any range, a
mangled address, a translation written twice. The emitter writes one key per
line and remembers where each went, so the line an error names is checked
against the line that was broken, not only parsed.
"""

import collections
import ipaddress
import json
import os
import random
import re
import subprocess
import sys

import tomllib

import pytest

from appliance import ConfigError, parse_config
from test_live import CONFIG

DOCUMENTS = int(os.environ.get("APPLIANCE_CONFIG_FUZZ", "3000"))
PATH = "/etc/appliance/fuzz.toml"

BASE = {
    "flow_hash_seed": 1234,
    "timeouts": {"session": 30, "tcp_established": 3600, "tcp_closing": 5},
    "sessions": {"max": 65536},
    "datapath": {"workers": 1},
    "snat": {"ip4": "30.0.0.1", "ip6": "30::1", "exclude": ["20.0.0.0/24", "20::/100"],
             "interfaces": ["tap0"], "policy": "if-pfx"},
    "plugins": {"modules": [], "hook_budget_ms": 5.0, "disable_after": 10},
    "interface": [{"name": "n0"}, {"name": "n1", "xdp_mode": "native"}],
    "translation": [
        {"proto": "tcp", "vip": "30.0.0.2", "port": 80,
         "backends": ["->20.0.0.1 8080", "1.2.3.4->20.0.0.2 8080"]},
        {"proto": "udp", "vip": "30::2", "port": 53, "backends": ["->20::1 5353"]},
    ],
}

# the live tests' configuration, broken against a running appliance there
LIVE = tomllib.loads(CONFIG.format(session=30, closing=5))



def addressy(v) -> bool:
    """An address, a prefix or a backend: what bad_address breaks."""
    if not isinstance(v, str):
        return False
    try:
        return "->" in v or bool(ipaddress.ip_network(v, strict=False))
    except ValueError:
        return False


BARE = re.compile(r"^[A-Za-z0-9_-]+$")
# an unknown key of every sort: ascii, unicode, a look-alike of a real one
UNKNOWN_KEYS = ["bogus", "backendz", "pört", "séssion", "ключ", "键", "vip ", "🙂", "x" * 200, "max\u200b", "a\u2028b"]


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)   # a TOML basic string, unicode as it is
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"


def _key(k: str) -> str:
    return k if BARE.match(k) else json.dumps(k, ensure_ascii=False)


def emit(doc: dict) -> tuple[str, dict]:
    """TOML text for `doc`, and the line of each key by its path."""
    lines, where = [], {}

    def keys(d, path):
        for k, v in d.items():
            if (isinstance(v, dict) and path == ()) or (isinstance(v, list) and v and isinstance(v[0], dict)):
                continue   # a table of its own, below
            lines.append(f"{_key(k)} = {_value(v)}")
            where[path + (k,)] = len(lines)

    keys(doc, ())
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{_key(k)}]")
            where[(k,)] = len(lines)
            keys(v, (k,))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                lines.append(f"[[{_key(k)}]]")
                where[(k, i)] = len(lines)
                keys(item, (k, i))
    return "\n".join(lines) + "\n", where


def leaves(doc, path=()):
    """The path of every scalar or list value."""
    for k, v in (doc.items() if isinstance(doc, dict) else enumerate(doc)):
        if isinstance(v, dict) or isinstance(v, list) and v and isinstance(v[0], dict):
            yield from leaves(v, path + (k,))
        else:
            yield path + (k,)


def tables(doc, path=()):
    """The path of every table, the top level's () too."""
    yield path
    for k, v in (doc.items() if isinstance(doc, dict) else enumerate(doc)):
        if isinstance(v, dict):
            yield from tables(v, path + (k,))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                yield from tables(item, path + (k, i))


def at(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def wrong_type(old, rng):
    """A value of a type no key that holds `old` accepts."""
    if isinstance(old, bool):
        return rng.choice(["yes", 1, [True]])
    if isinstance(old, (int, float)):
        return rng.choice(["30", "", [1], {"n": 1}, True, "３０"])
    if isinstance(old, str):
        return rng.choice([1, -1, 1.5, True, {"s": old}, [[old]]])
    return rng.choice([1, True, {"l": 1}, "" if not old else [1, 2]])   # a list


def mangled_address(old: str, rng) -> str:
    return rng.choice([
        old.replace("0", "300", 1) if "." in old else old.replace(":", ":zz", 1),
        old + "/" + rng.choice(["33", "129", "x", ""]),
        old.replace("0", "\uff10", 1).replace("1", "\u0661", 1),   # fullwidth and arabic-indic digits
        old + "\u200b",
        old + "\u2028",   # a line separator to splitlines(), not to TOML
        "::ffff:" * 3 + old,
        old.replace(".", "..", 1) if "." in old else old.replace("::", ":::", 1),
    ])


def mutate(rng, base=BASE):
    """A broken copy of `base`: (kind, doc, the path whose line the error must
    name or, for a duplicate, the table whose line or lines below it)."""
    doc = json.loads(json.dumps(base))
    kind = rng.choice(["wrong_type", "unknown_key", "huge_number", "bad_address", "duplicate"])
    if kind == "duplicate":
        i = rng.randrange(len(doc["translation"]))
        doc["translation"].append(json.loads(json.dumps(doc["translation"][i])))
        return kind, doc, ("translation", len(doc["translation"]) - 1)
    if kind == "unknown_key":
        table = rng.choice(list(tables(doc)))
        key = rng.choice(UNKNOWN_KEYS)
        at(doc, table)[key] = rng.choice([1, "x", [1], True])
        return kind, doc, table + (key,)
    paths = list(leaves(doc))
    if kind == "huge_number":
        paths = [p for p in paths if isinstance(at(doc, p), int) and not isinstance(at(doc, p), bool)]
    elif kind == "bad_address":
        paths = [p for p in paths for v in [at(doc, p)]
                 if addressy(v) or isinstance(v, list) and v and all(addressy(x) for x in v)]
    path = rng.choice(paths)
    parent, key, old = at(doc, path[:-1]), path[-1], at(doc, path)
    if kind == "wrong_type":
        parent[key] = wrong_type(old, rng)
    elif kind == "huge_number":
        parent[key] = rng.choice([-1, -(10 ** 18), 2 ** 63 - 1, 10 ** 18]) if key != "flow_hash_seed" \
            else rng.choice([-1, -(2 ** 63)])
    elif isinstance(old, list):
        j = rng.randrange(len(old))
        old[j] = mangled_address(old[j], rng)
    else:
        parent[key] = mangled_address(old, rng)
    return kind, doc, path


def check_one(seed: int, base=BASE):
    rng = random.Random(seed)
    kind, doc, path = mutate(rng, base)
    text, where = emit(doc)
    context = f"seed {seed} ({kind} at {path}):\n{text}"
    try:
        parse_config(text, PATH)
    except ConfigError as exc:
        error = exc
    except Exception as exc:   # noqa: BLE001 - any other is the bug this test looks for
        raise AssertionError(f"{type(exc).__name__}: {exc}\n{context}") from None
    else:
        raise AssertionError(f"accepted\n{context}")
    msg = str(error)
    assert "\n" not in msg and error.line, f"{msg!r}\n{context}"
    assert re.match(rf"^{re.escape(PATH)}:\d+: \S", msg), f"{msg!r}\n{context}"
    if kind == "duplicate":   # the duplicate's header or one of its keys
        first = where[path]
        last = max((n for p, n in where.items() if p[:2] == path), default=first)
        assert first <= error.line <= last, f"{msg!r}\n{context}"
    else:
        line = where.get(path) or where.get(path[:-1] if isinstance(path[-1], int) else path)
        assert error.line == line, f"{msg!r}: line {line} expected\n{context}"
    return kind


@pytest.mark.parametrize("base", [BASE, LIVE], ids=["base", "test_live"])
def test_generated_invalid_configs_each_name_the_broken_line(base):
    reached = collections.Counter(check_one(seed, base) for seed in range(DOCUMENTS))
    # every kind of break was made, and often (the base is ~40 lines)
    assert set(reached) == {"wrong_type", "unknown_key", "huge_number", "bad_address", "duplicate"}, reached
    assert min(reached.values()) >= DOCUMENTS // 10, reached


def test_check_config_prints_one_line_and_fails(tmp_path):
    """The CLI, on a sample: a failing exit status, one line on stderr, no traceback."""
    for seed in range(0, DOCUMENTS, DOCUMENTS // 12):
        kind, doc, path = mutate(random.Random(seed))
        f = tmp_path / f"c{seed}.toml"
        f.write_text(emit(doc)[0])
        p = subprocess.run([sys.executable, "-m", "appliance", "check-config", str(f)],
                           capture_output=True, text=True, timeout=60)
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and p.stdout == "", (seed, p)
        assert len(lines) == 1 and re.match(rf"^appliance: error: {re.escape(str(f))}:\d+: \S", lines[0]), (seed, p.stderr)
