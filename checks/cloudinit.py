"""cloud-init's configuration as cloud-init merges it, and whether cloud-init is enabled.

Rules (cloud-init ``cloudinit/util.py``: ``read_conf_with_confd``, ``read_conf_d``,
``mergemanydict``; ``cloudinit/mergers/m_dict.py``):
  - ``/etc/cloud/cloud.cfg`` is read first; its ``conf_d`` key, when present, names the drop-in
    directory (empty: none), else ``/etc/cloud/cloud.cfg.d`` is used; the drop-ins override
    ``cloud.cfg``;
  - the drop-ins are the ``*.cfg`` regular files of that directory, in lexical order, a later file
    overriding an earlier one;
  - the default merger merges dicts recursively (a key set in both keeps the overriding file's
    value unless both values are dicts, which are merged the same way); lists and scalars are
    not merged, the overriding file's value replaces them wholesale;
  - a file that is not a YAML mapping contributes nothing.
Not modelled: ``merge_how``/``merge_type`` keys inside a file (other mergers), the list merger's
quirk of letting a lower file's mapping replace a higher file's list, and runtime sources
(``/run/cloud-init/cloud.cfg`` written by ds-identify, the kernel command line, vendor/user data).

Disabled: ``/etc/cloud/cloud-init.disabled``, ``cloud-init=disabled`` on the command line
(cloud-init docs "How to disable cloud-init").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .catalog import Context, Finding
from .guest import Guest
from .guestlib import cmdlines, guest, memo, units

CLOUD_CFG = "/etc/cloud/cloud.cfg"
CLOUD_CFG_D = "/etc/cloud/cloud.cfg.d"


@dataclass(frozen=True)
class CloudConfig:
    merged: dict[str, Any]
    #: dotted key ("datasource_list", "datasource.Azure.apply_network_config") -> the file whose
    #: value is the merged one (for a mapping: the last file that set anything under it)
    origin: dict[str, str]
    errors: tuple[Finding, ...]

    def get(self, *keys: str) -> Any:
        """The merged value at ``keys`` (nested mappings), or None."""
        node: Any = self.merged
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node


def _merge_into(base: dict[str, Any], doc: dict[str, Any], path: str, origin: dict[str, str],
                prefix: str = "") -> None:
    """Merge ``doc`` (from ``path``) over ``base`` as cloud-init's default merger does."""
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        origin[dotted] = path
        old = base.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            base[key] = dict(old)
            _merge_into(base[key], value, path, origin, f"{dotted}.")
            continue
        for stale in [o for o in origin if o.startswith(f"{dotted}.")]:
            del origin[stale]
        base[key] = value
        if isinstance(value, dict):
            _merge_into({}, value, path, origin, f"{dotted}.")


def _read(g: Guest, path: str, errors: list[Finding]) -> dict[str, Any]:
    import yaml
    text = g.read_text(path)
    if text is None:
        return {}
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        errors.append(Finding(f"cloud-init cannot parse {path}: {e}", path))
        return {}
    return doc if isinstance(doc, dict) else {}


def _cloud_config(g: Guest) -> CloudConfig | None:
    if not g.exists("/usr/bin/cloud-init") and not g.is_file(CLOUD_CFG):
        return None
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    errors: list[Finding] = []
    base = _read(g, CLOUD_CFG, errors)
    _merge_into(merged, base, CLOUD_CFG, origin)
    confd = base.get("conf_d") if "conf_d" in base else CLOUD_CFG_D
    if isinstance(confd, str) and confd.strip():
        d = confd.strip().rstrip("/") or "/"
        for path in sorted(p for p in g.glob(d, r".+\.cfg") if g.is_file(p)):
            _merge_into(merged, _read(g, path, errors), path, origin)
    return CloudConfig(merged, origin, tuple(errors))


def cloud_config(ctx: Context) -> CloudConfig | None:
    """The merged configuration, or None when cloud-init is not installed."""
    return memo(ctx, "guest.cloudcfg", _cloud_config)


def cloudinit_enabled(ctx: Context) -> bool:
    g = guest(ctx)
    if cloud_config(ctx) is None or g.exists("/etc/cloud/cloud-init.disabled"):
        return False
    if any("cloud-init=disabled" in c.args for c in cmdlines(ctx)):
        return False
    return any(u.startswith("cloud-init") for u in units(ctx))


__all__ = ["CLOUD_CFG", "CLOUD_CFG_D", "CloudConfig", "cloud_config", "cloudinit_enabled"]
