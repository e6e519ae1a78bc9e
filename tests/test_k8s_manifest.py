"""The Kubernetes example (examples/k8s/appliance.yaml) matches what the
container test runs: the image it builds, the capabilities it grants, the
configuration path and the TUN device; its TOML and plugin are valid."""

import pathlib
import subprocess
import sys

import yaml

from test_container import CAPS, IMAGE

MANIFEST = pathlib.Path(__file__).resolve().parent.parent / "examples" / "k8s" / "appliance.yaml"


def docs():
    return {d["kind"] + "/" + d["metadata"]["name"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


def test_the_daemonset_runs_the_image_as_the_container_test_does():
    ds = docs()["DaemonSet/cnat-appliance"]
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == IMAGE and pod["hostNetwork"] is True
    assert set(c["securityContext"]["capabilities"]["add"]) == set(CAPS.split(","))
    assert c["args"][:3] == ["run", "--config", "/etc/appliance/appliance.toml"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/etc/appliance" and "subPath" not in mounts["config"]   # reloads
    assert mounts["tun"]["mountPath"] == "/dev/net/tun"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["tun"]["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    port = c["args"][c["args"].index("--metrics") + 1].rsplit(":", 1)[1]
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == port == str(c["ports"][0]["containerPort"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["exec"]["command"][:2] == ["appliance", "show"]   # the default control socket


def test_its_configuration_and_plugin_are_valid(tmp_path):
    d = docs()
    (tmp_path / "appliance.toml").write_text(d["ConfigMap/cnat-appliance"]["data"]["appliance.toml"])
    ds = d["DaemonSet/cnat-appliance"]
    projected = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    for source in projected["projected"]["sources"]:
        cm = d["ConfigMap/" + source["configMap"]["name"]]
        for item in source["configMap"].get("items", []):
            path = tmp_path / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(cm["data"][item["key"]])
    r = subprocess.run([sys.executable, "-m", "appliance", "check-config", str(tmp_path / "appliance.toml")],
                       capture_output=True, text=True, cwd="/")
    assert r.returncode == 0 and "myplugins.deny" in r.stdout, r.stdout + r.stderr
