"""``iscsi-conformance peers``: the peers this installation knows, with their manifests."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="iscsi-conformance peers", description=__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    from iscsi_conformance.peers import registry

    out: dict[str, list[dict[str, object]]] = {"target": [], "initiator": []}
    for role in ("target", "initiator"):
        for name in registry.names(role):  # type: ignore[arg-type]
            manifest = registry._manifest_for(role, name)  # type: ignore[arg-type]
            out[role].append(
                {
                    "name": name,
                    "description": manifest.description,
                    "capabilities": manifest.capabilities,
                    "deviations": [
                        {k: d.get(k) for k in ("test", "versions", "reason")}
                        for d in manifest.deviations
                    ],
                }
            )
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return 0
    for role, peers in out.items():
        print(f"{role}s:")
        for p in peers:
            caps = ", ".join(f"{k}={v}" for k, v in sorted(p["capabilities"].items()))  # type: ignore[attr-defined]
            print(f"  {p['name']:<12} {p['description']}")
            print(f"  {'':<12} capabilities: {caps}")
            for d in p["deviations"]:  # type: ignore[attr-defined]
                print(f"  {'':<12} deviation {d['test']} ({d['versions']}): {d['reason']}")
    errors = registry.import_errors()
    for mod, err in errors.items():
        print(f"warning: driver module {mod} did not load: {err}")
    return 0
