"""cluster/: every manifest parses, matches its schema, and runs real CLI commands.

Schemas: the KubeRay CRDs (RayJob, RayCluster; tests/cluster/schemas/README.md says where
they come from), Kubernetes' batch/v1 CronJob (the ``kubernetes-validate`` package) and the
Ray cluster launcher's own schema (the installed ``ray`` package). Unknown fields are
errors, as on an API server under ``kubectl --validate=strict`` (the default since 1.27),
so a misspelt field fails here rather than being dropped on a cluster.

Commands (a RayJob entrypoint, a CronJob's container command, and the `delift-ray ...`
lines in each file's comments) are parsed with the real argument parser, so a renamed
flag or subcommand fails here rather than on a cluster.
"""

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml

from delift_ray.cli import build_parser
from delift_ray.config import load_config
from tests.helpers import ROOT

CLUSTER = ROOT / "cluster"
SCHEMAS = Path(__file__).parent / "schemas"
KUBERAY_VERSION = "v1.7.0"
KUBERNETES_VERSION = "1.31"
MANIFESTS = ["cronjob-watch.yaml", "ray-cluster-launcher.yaml", "raycluster.yaml", "rayjob.yaml"]


def load(name):
    docs = [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]
    assert len(docs) == 1
    return docs[0]


def parse_cli(argv):
    """Parse a `delift-ray ...` argv with the real parser; argparse errors become test failures."""
    assert argv[0] == "delift-ray", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"not a valid delift-ray command ({exc}): {' '.join(argv)}")


def check_job_flags(args):
    """Job flags must be valid config values too (types, choices), whatever the job file adds."""
    from delift_ray.cli import overrides_from

    tree = {"data": "d", "model": "m", "out": "o"}
    tree.update(overrides_from(args))
    load_config(None, tree)


def containers(pod_template):
    return pod_template["spec"]["containers"]


def strict(schema):
    """A CRD schema as a strict API server applies it: fields it does not declare are errors
    (except where it says ``x-kubernetes-preserve-unknown-fields``)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_errors(kind):
    schema = strict(json.loads((SCHEMAS / f"kuberay-{KUBERAY_VERSION}-{kind}.json").read_text()))
    validator = jsonschema.Draft7Validator(schema)
    return lambda doc: [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def cronjob_errors(doc):
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


def launcher_errors(doc):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


SCHEMA_ERRORS = {
    "rayjob.yaml": crd_errors("rayjob"),
    "raycluster.yaml": crd_errors("raycluster"),
    "cronjob-watch.yaml": cronjob_errors,
    "ray-cluster-launcher.yaml": launcher_errors,
}


def test_all_manifests_are_covered():
    assert sorted(p.name for p in CLUSTER.glob("*.yaml")) == MANIFESTS == sorted(SCHEMA_ERRORS)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_its_schema(name):
    assert SCHEMA_ERRORS[name](load(name)) == []


HEAD = ("spec", "rayClusterSpec", "headGroupSpec")
WORKER = ("spec", "rayClusterSpec", "workerGroupSpecs", 0)
POD = ("spec", "jobTemplate", "spec", "template", "spec")


@pytest.mark.parametrize(
    ("name", "path", "typo"),
    [
        ("rayjob.yaml", ("spec", "entrypoint"), "entryPoint"),
        ("rayjob.yaml", ("spec", "shutdownAfterJobFinishes"), "shutdownAfterJobFinished"),
        ("rayjob.yaml", (*HEAD, "template", "spec", "containers", 0, "volumeMounts"), "volumeMount"),
        ("rayjob.yaml", (*WORKER, "maxReplicas"), "maxReplica"),
        ("raycluster.yaml", ("spec", "headGroupSpec", "rayStartParams"), "rayStartParameters"),
        (
            "raycluster.yaml",
            ("spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0, "resources"),
            "resource",
        ),
        ("cronjob-watch.yaml", ("spec", "concurrencyPolicy"), "concurrencypolicy"),
        ("cronjob-watch.yaml", (*POD, "restartPolicy"), "restartpolicy"),
        ("cronjob-watch.yaml", (*POD, "containers", 0, "volumeMounts"), "volumemounts"),
        ("ray-cluster-launcher.yaml", ("head_start_ray_commands",), "head_start_commands"),
        ("ray-cluster-launcher.yaml", ("available_node_types", "gpu_worker", "min_workers"), "min_worker"),
    ],
)
def test_misspelt_field_fails_its_schema(name, path, typo):
    doc = copy.deepcopy(load(name))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    assert path[-1] in parent, path  # the field the typo replaces is there
    parent[typo] = parent.pop(path[-1])
    errors = SCHEMA_ERRORS[name](doc)
    assert errors and any(typo in e or repr(path[-1]) in e for e in errors), errors


def test_rayjob():
    m = load("rayjob.yaml")
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayJob" and m["metadata"]["name"]
    spec = m["spec"]
    rc = spec["rayClusterSpec"]
    assert rc["headGroupSpec"]["rayStartParams"] is not None and containers(rc["headGroupSpec"]["template"])
    for g in rc["workerGroupSpecs"]:
        assert g["groupName"] and containers(g["template"])[0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = parse_cli(shlex.split(spec["entrypoint"]))
    assert args.command == "select" and args.config
    check_job_flags(args)
    assert getattr(args, "cfg:cache") and getattr(args, "cfg:ray.address") == "auto"


def test_cronjob_runs_watch_once():
    m = load("cronjob-watch.yaml")
    assert m["apiVersion"] == "batch/v1" and m["kind"] == "CronJob"
    spec = m["spec"]
    assert len(spec["schedule"].split()) == 5 and spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]
    assert pod["spec"]["restartPolicy"] in ("Never", "OnFailure")
    (c,) = containers(pod)
    assert c["image"] and c["command"][:2] == ["/bin/bash", "-lc"]
    script, _name, *argv = c["args"]  # bash -c SCRIPT $0 "$@"
    assert 'exec "$@"' in script
    args = parse_cli(argv)
    assert args.command == "watch" and args.once and args.location.startswith("/data/")
    check_job_flags(args)
    assert getattr(args, "cfg:ray.address").startswith("ray://")
    mounts = {v["mountPath"] for v in c["volumeMounts"]}
    assert any(args.out.startswith(p) and args.location.startswith(p) for p in mounts)


def test_raycluster():
    m = load("raycluster.yaml")
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayCluster"
    spec = m["spec"]
    assert containers(spec["headGroupSpec"]["template"])[0]["image"].startswith("rayproject/ray:")
    assert all(containers(g["template"]) for g in spec["workerGroupSpecs"])


def test_cluster_launcher():
    m = load("ray-cluster-launcher.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "head_start_ray_commands"):
        assert m[key], key
    assert m["head_node_type"] in m["available_node_types"] and m["provider"]["type"]
    assert any("delift-ray" in cmd for cmd in m["setup_commands"])


@pytest.mark.parametrize("name", ["cronjob-watch.yaml", "ray-cluster-launcher.yaml", "raycluster.yaml", "rayjob.yaml"])
def test_commands_in_comments_are_valid(name):
    cmds = []  # command lines, not `quoted` mentions in prose
    for line in (CLUSTER / name).read_text().splitlines():
        m = re.match(r"#[^`]*?(delift-ray (?:select|submit|reselect|watch|status|logs)\b.*)$", line)
        if m:
            cmds.append(m.group(1))
    for cmd in cmds:
        args = parse_cli(shlex.split(cmd))
        if hasattr(args, "config"):
            check_job_flags(args)
