"""Turn a CustomResourceDefinition into the JSON schema tests/cluster/test_manifests.py uses.

    python tests/cluster/schemas/extract_crd.py ray.io_rayjobs.yaml > kuberay-v1.7.0-rayjob.json

Takes the ``openAPIV3Schema`` of the CRD's served storage version and drops the
``description`` texts (two thirds of the bytes; validation never reads them). Nothing else
is changed here: the strictness an API server applies (unknown fields are an error under
``kubectl --validate=strict``, the default since Kubernetes 1.27) is added by the test.
"""

from __future__ import annotations

import json
import sys

import yaml


def strip_descriptions(node):
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def crd_schema(crd: dict) -> dict:
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return strip_descriptions(version["schema"]["openAPIV3Schema"])


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        crd = yaml.safe_load(f)
    json.dump(crd_schema(crd), sys.stdout, indent=None, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")
