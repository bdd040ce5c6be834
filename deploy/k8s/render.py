#!/usr/bin/env python3
"""Render a kustomization of the subset this repository uses, without kubectl.

`kubectl kustomize DIR` is the real renderer; this one exists so that
`make test-deploy` can validate the manifests on a machine whose only
kubectl is Debian's `kubernetes-client` (1.20, kustomize v2.0.3, which cannot
read `resources: [dir]` or `patches:`) or that has none. When a kubectl with
kustomize >= v4 is present, deploy/k8s/check.py renders with both and fails if
they disagree, so this file cannot silently drift from kustomize.

Supported, and nothing else (an unknown kustomization field is an error, not
a silent skip):
  - `resources`: YAML files (multi-document) and directories holding a
    kustomization, rendered recursively (overlays on bases);
  - `namespace`: set on every namespaced object (and as the name of a
    Namespace object, as kustomize does);
  - `images`: `name` matched against the image name (without tag or digest),
    `newName` and/or `newTag` replace them, in containers and initContainers;
  - `patches` with `path`: a strategic-merge patch per document, applied to the
    object of the same apiVersion group, kind and name. Maps merge key by key;
    lists of maps merge by the Kubernetes merge key (`name` for containers,
    ports, env, volumes, volumeMounts…; `containerPort` for container ports is
    not needed here) and any other list is replaced, as kubectl does for the
    fields used here; a `null` value deletes the key.

Usage: render.py DIR  → the rendered objects as a YAML stream on stdout.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}

# Kinds that are not namespaced among those kustomize may meet here.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "IngressClass",
}

# List fields merged element by element, by this key, in strategic merge.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ports": "name",
    "env": "name",
    "envFrom": None,  # replaced
    "volumes": "name",
    "volumeMounts": "mountPath",
}


class RenderError(Exception):
    pass


def load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def identity(obj: dict) -> tuple[str, str, str]:
    return (group(obj.get("apiVersion", "")), obj.get("kind", ""), obj["metadata"]["name"])


def merge(base, patch, field: str | None = None):
    """Strategic merge of `patch` into `base` (both plain YAML values)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = MERGE_KEYS.get(field or "")
        if key and all(isinstance(x, dict) and key in x for x in base + patch):
            out = [copy.deepcopy(x) for x in base]
            for item in patch:
                for i, existing in enumerate(out):
                    if existing[key] == item[key]:
                        out[i] = merge(existing, item, None)
                        break
                else:
                    out.append(copy.deepcopy(item))
            return out
    return copy.deepcopy(patch)


def set_images(obj, images: list[dict]) -> None:
    if isinstance(obj, dict):
        for key in ("containers", "initContainers"):
            for container in obj.get(key) or []:
                if isinstance(container, dict) and "image" in container:
                    container["image"] = new_image(container["image"], images)
        for value in obj.values():
            set_images(value, images)
    elif isinstance(obj, list):
        for value in obj:
            set_images(value, images)


def new_image(image: str, images: list[dict]) -> str:
    name, tag = image, None
    if "@" in name:
        name, tag = name.split("@", 1)[0], "@" + name.split("@", 1)[1]
    elif ":" in name.rsplit("/", 1)[-1]:
        name, t = name.rsplit(":", 1)
        tag = ":" + t
    for rule in images:
        if rule.get("name") == name:
            name = rule.get("newName", name)
            if "newTag" in rule:
                tag = ":" + str(rule["newTag"])
            if "digest" in rule:
                tag = "@" + rule["digest"]
    return name + (tag or "")


def render(directory: Path) -> list[dict]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    with path.open() as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - KNOWN_FIELDS
    if unknown:
        raise RenderError(f"{path}: fields this renderer does not support: {sorted(unknown)}")
    objects: list[dict] = []
    for entry in k.get("resources") or []:
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(render(target))
        elif target.is_file():
            objects.extend(load_docs(target))
        else:
            raise RenderError(f"{path}: resource {entry} does not exist")
    for patch in k.get("patches") or []:
        if set(patch) != {"path"}:
            raise RenderError(f"{path}: only `patches: - path: FILE` is supported, got {patch}")
        for doc in load_docs(directory / patch["path"]):
            matches = [i for i, o in enumerate(objects) if identity(o) == identity(doc)]
            if len(matches) != 1:
                raise RenderError(f"{path}: patch {patch['path']} for {identity(doc)} matches {len(matches)} objects")
            objects[matches[0]] = merge(objects[matches[0]], doc)
    if "namespace" in k:
        for obj in objects:
            if obj.get("kind") == "Namespace":
                obj["metadata"]["name"] = k["namespace"]
            elif obj.get("kind") not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    if k.get("images"):
        for obj in objects:
            set_images(obj, k["images"])
    return objects


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: render.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    try:
        objects = render(Path(sys.argv[1]))
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
