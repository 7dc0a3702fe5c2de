"""Runs inside .venv-az (the pinned Azure CLI, scripts/bootstrap): the real clients' verdict on what
``vhdtool manifest`` emits.  Not a test module: tests/vhdtool/test_az_commands.py runs it as
``.venv-az/bin/python az_client.py < request.json > answer.json``.

request: {"commands": [[argv after "az"], ...], "features": [[[name, value], ...], ...],
          "arm": [resource, ...]}
answer:  {"versions": {...}, "commands": [{"argv", "code", "stderr"}], "features": [[problem...]],
          "arm": [[problem...]]}

- commands: each through az's own entry (``get_default_cli().invoke``, what ``python -m azure.cli``
  runs), in this one process (az's start-up, ~1 s, is paid once).  One deliberate difference: the
  parsers get ``allow_abbrev = False``, because az 2.91 accepts any unambiguous prefix of a flag
  (``--upload-size-byte``), and a prefix unique today becomes ambiguous when az adds a flag.
- features: the gallery image features against what az and azure-mgmt-compute know
  (feature_problems).
- arm: each resource of the ARM fragment deserialized into the azure-mgmt-compute model of its type
  and apiVersion and serialized back: nothing lost, nothing unknown, enum values, required fields.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import io
import json
import pkgutil
import re
import sys
from enum import Enum
from typing import Any

ARM_KEYS = {"type", "apiVersion", "name", "dependsOn"}     # template keys, not the resource body
MODELS = {"Microsoft.Compute/galleries": "Gallery",
          "Microsoft.Compute/galleries/images": "GalleryImage",
          "Microsoft.Compute/galleries/images/versions": "GalleryImageVersion",
          "Microsoft.Compute/disks": "Disk", "Microsoft.Compute/snapshots": "Snapshot"}


class _Stream(io.TextIOBase):
    """sys.stdout/stderr for the whole run: az's log handlers keep the stream they were built
    with, so each command's output is captured by swapping the target, not the stream."""

    def __init__(self) -> None:
        self.target = io.StringIO()

    def write(self, s: str) -> int:
        return self.target.write(s)


def strict_parsers() -> None:
    init = argparse.ArgumentParser.__init__

    def no_abbrev(self: argparse.ArgumentParser, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        self.allow_abbrev = False

    argparse.ArgumentParser.__init__ = no_abbrev  # type: ignore[method-assign]


def run_commands(argvs: list[list[str]]) -> list[dict[str, Any]]:
    from azure.cli.core import get_default_cli
    out, err = _Stream(), _Stream()
    real = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    results = []
    try:
        for argv in argvs:
            out.target, err.target = io.StringIO(), io.StringIO()
            try:
                code = get_default_cli().invoke(argv)
            except SystemExit as e:     # argparse errors leave through sys.exit
                code = e.code if isinstance(e.code, int) else 1
            results.append({"argv": argv, "code": code, "stderr": err.target.getvalue()})
    finally:
        sys.stdout, sys.stderr = real
    return results


# -- what az and the SDK know about gallery image features -----------------------------------------

def _newest(attr: str) -> Any:
    """``attr`` from the newest azure.mgmt.compute API version whose models define it."""
    import azure.mgmt.compute as compute
    versions = sorted(m.name for m in pkgutil.iter_modules(compute.__path__)
                      if re.fullmatch(r"v\d{4}_\d\d_\d\d", m.name))
    for v in reversed(versions):
        models = importlib.import_module(f"azure.mgmt.compute.{v}.models")
        if hasattr(models, attr):
            return getattr(models, attr), v
    raise LookupError(f"no azure.mgmt.compute API version defines {attr}")


def az_feature_examples() -> dict[str, set[str]]:
    """Feature names and values that az documents for ``az sig image-definition create``: the
    examples of its help and the --features argument's help text."""
    import yaml
    from azure.cli.command_modules.vm import _help, _params
    doc = yaml.safe_load(_help.helps["sig image-definition create"])
    text = " ".join(e["text"] for e in doc["examples"])
    text += " " + re.sub(r"\s+", " ", open(_params.__file__, encoding="utf-8").read())
    known: dict[str, set[str]] = {}
    for name, value in re.findall(r"\b((?:Is[A-Za-z]+Supported)|SecurityType)=([A-Za-z]+)", text):
        known.setdefault(name, set()).add(value)
    return known


def feature_catalog() -> dict[str, Any]:
    from azure.cli.command_modules.vm._constants import COMPATIBLE_SECURITY_TYPE_VALUE
    controllers, cv = _newest("DiskControllerTypes")
    security, sv = _newest("SecurityTypes")
    caps, capv = _newest("SupportedCapabilities")
    return {"az": az_feature_examples(), "standard": COMPATIBLE_SECURITY_TYPE_VALUE,
            "controllers": controllers, "security": security, "capabilities": caps,
            "sources": {"DiskControllerTypes": cv, "SecurityTypes": sv,
                        "SupportedCapabilities": capv}}


def _is_bool(value: str) -> bool:
    from azure.mgmt.compute._serialization import Deserializer
    try:
        Deserializer().deserialize_data(value, "bool")
    except Exception:  # noqa: BLE001 - the SDK's DeserializationError
        return False
    return True


def feature_problems(features: list[list[str]], cat: dict[str, Any]) -> list[str]:
    """Why a gallery feature list would be wrong, by the clients' own knowledge (empty: fine).

    SecurityType: a value az documents (its help examples, or ``Standard``, which az drops with
    a hint) whose parts before ``Supported`` are the SDK's SecurityTypes.  DiskControllerTypes:
    comma-separated members of the SDK's DiskControllerTypes enum (the feature is the REST key
    ``diskControllerTypes`` of SupportedCapabilities).  Is*Supported: names az documents, values the
    SDK's deserializer reads as a bool (IsAcceleratedNetworkSupported is SupportedCapabilities'
    ``acceleratedNetwork``, a bool).
    """
    problems, seen = [], set()
    az_known: dict[str, set[str]] = cat["az"]
    for name, value in features:
        if name in seen:
            problems.append(f"{name} given twice")
        seen.add(name)
        if name == "SecurityType":
            documented = az_known.get("SecurityType", set()) | {cat["standard"]}
            if value not in documented:
                problems.append(f"SecurityType={value}: az documents {sorted(documented)}")
            elif value != cat["standard"]:
                sdk = {m.value.lower() for m in cat["security"]}
                for part in value.removesuffix("Supported").split("And"):
                    if part.lower() not in sdk:
                        problems.append(f"SecurityType={value}: {part} is not in the SDK's "
                                        f"SecurityTypes {sorted(m.value for m in cat['security'])}")
        elif name == "DiskControllerTypes":
            members = [m.value for m in cat["controllers"]]
            parts = value.split(",")
            bad = [p for p in parts if p not in members]
            if bad or len(set(parts)) != len(parts):
                problems.append(f"DiskControllerTypes={value}: not distinct members of the "
                                f"SDK's DiskControllerTypes {members}")
            if "disk_controller_types" not in cat["capabilities"]._attribute_map:
                problems.append("the SDK's SupportedCapabilities has no diskControllerTypes")
        elif name in az_known and name.startswith("Is"):
            if not _is_bool(value):
                problems.append(f"{name}={value}: not a bool to the SDK's deserializer")
        else:
            problems.append(f"{name}: a feature name neither az nor the SDK knows")
    return problems


# -- the ARM fragment through the SDK's models -----------------------------------------------------

def _enum_of(model: type, attr: str, models: Any) -> type[Enum] | None:
    """The enum an attribute holds, from the model's docstring (``:vartype x: str or ~...Enum``)."""
    m = re.search(rf":vartype {attr}: str or ~[\w.]+\.(\w+)\b", model.__doc__ or "")
    enum = getattr(models, m.group(1), None) if m else None
    return enum if isinstance(enum, type) and issubclass(enum, Enum) else None


def _rule_problems(obj: Any, attr: str, value: Any, where: str) -> list[str]:
    """The model's own ``_validation`` rules for one attribute (required, length, pattern)."""
    rules = getattr(type(obj), "_validation", {}).get(attr, {})
    if rules.get("readonly"):
        return [] if value is None else [f"{where}: read-only, Azure sets it"]
    if value is None:
        return [f"{where}: required"] if rules.get("required") else []
    out = []
    if "pattern" in rules and isinstance(value, str) and not re.search(rules["pattern"], value):
        out.append(f"{where}={value!r}: does not match {rules['pattern']}")
    for rule, test in (("max_length", lambda v, n: len(v) <= n),
                       ("min_length", lambda v, n: len(v) >= n),
                       ("maximum", lambda v, n: v <= n), ("minimum", lambda v, n: v >= n)):
        if rule in rules and not test(value, rules[rule]):
            out.append(f"{where}={value!r}: {rule} {rules[rule]}")
    return out


def model_problems(obj: Any, models: Any, where: str) -> list[str]:
    """Required fields, the model's constraints and enum values, through the whole object."""
    problems = []
    for attr, spec in type(obj)._attribute_map.items():
        value = getattr(obj, attr, None)
        here = f"{where}.{spec['key']}"
        problems += _rule_problems(obj, attr, value, here)
        if isinstance(value, list):
            for i, item in enumerate(value):
                if hasattr(item, "_attribute_map"):
                    problems += model_problems(item, models, f"{here}[{i}]")
        elif hasattr(value, "_attribute_map"):
            problems += model_problems(value, models, here)
        elif value is not None:
            enum = _enum_of(type(obj), attr, models)
            if enum is not None and str(getattr(value, "value", value)) not in \
                    [e.value for e in enum]:
                problems.append(f"{here}={value}: not one of {enum.__name__} "
                                f"{[e.value for e in enum]}")
    return problems


def arm_problems(resource: dict[str, Any], cat: dict[str, Any]) -> list[str]:
    rtype, api = resource.get("type"), resource.get("apiVersion", "")
    if rtype not in MODELS:
        return [f"{rtype}: no azure-mgmt-compute model known to this check"]
    try:
        models = importlib.import_module(f"azure.mgmt.compute.v{api.replace('-', '_')}.models")
    except ImportError:
        return [f"{rtype}: apiVersion {api} is not one azure-mgmt-compute has"]
    model = getattr(models, MODELS[rtype], None)
    if model is None:
        return [f"{rtype}: apiVersion {api} of the SDK has no {MODELS[rtype]}"]
    body = {k: v for k, v in resource.items() if k not in ARM_KEYS}
    try:
        obj = model.deserialize(body)
        back = obj.serialize()
    except Exception as e:  # noqa: BLE001 - the SDK's (de)serialization and validation errors
        return [f"{rtype}: the SDK's {MODELS[rtype]} ({api}) refuses it: {e}"]
    problems = []
    if back != body:
        problems.append(f"{rtype}: round trip through {MODELS[rtype]} ({api}) differs: "
                        f"sent {json.dumps(body, sort_keys=True)}, "
                        f"the SDK keeps {json.dumps(back, sort_keys=True)}")
    problems += model_problems(obj, models, rtype)
    for f in getattr(obj, "features", None) or []:
        problems += [f"{rtype}: {p}" for p in feature_problems([[f.name, f.value]], cat)]
    return problems


def main() -> None:
    request = json.load(sys.stdin)
    strict_parsers()
    cat = feature_catalog()
    answer = {
        "versions": {p: md.version(p) for p in ("azure-cli", "azure-cli-core",
                                                 "azure-mgmt-compute")},
        "sdk_enums": cat["sources"],
        "commands": run_commands(request.get("commands", [])),
        "features": [feature_problems(f, cat) for f in request.get("features", [])],
        "arm": [arm_problems(r, cat) for r in request.get("arm", [])],
    }
    json.dump(answer, sys.__stdout__, indent=1)


if __name__ == "__main__":
    main()
