#!/usr/bin/env python3
"""Checks the Grafana dashboard in deploy/grafana/ against the gateway's metrics.

Usage: check_dashboard.py DASHBOARD.json

Panel ids are unique; every panel (rows aside) has a datasource and at least
one target with an `expr`; every `clawnode_*` name in those expressions (and
in the template variables' queries) is a metric the gateway exports; gridPos
rectangles lie within the 24-column grid and do not overlap.
"""

import json
import re
import sys

METRICS = {
    "clawnode_build_info",
    "clawnode_start_time_seconds",
    "clawnode_presence_entries",
    "clawnode_connections",
    "clawnode_handshakes_total",
    "clawnode_auth_failures_total",
    "clawnode_beacons_total",
    "clawnode_presence_evictions_total",
    "clawnode_presence_max_entries",
    "clawnode_presence_cap_overshoot",
    "clawnode_connections_refused_total",
}
NAME = re.compile(r"clawnode_[a-z_]+")


def all_panels(panels):
    for p in panels:
        yield p
        # Panels inside a collapsed row.
        yield from all_panels(p.get("panels", []))


def metric_errors(where, text):
    return [f"{where}: unknown metric {m!r}" for m in NAME.findall(text) if m not in METRICS]


def check(dash):
    errors = []
    for key, want in (("uid", "clawnode-gateway"), ("title", "clawnode gateway"), ("schemaVersion", 39)):
        if dash.get(key) != want:
            errors.append(f"{key} is {dash.get(key)!r}, expected {want!r}")

    panels = list(all_panels(dash.get("panels", [])))
    if not panels:
        errors.append("no panels")
    seen = {}
    rects = []
    for p in panels:
        pid = p.get("id")
        name = f"panel {pid} ({p.get('title', '?')!r})"
        if pid is None:
            errors.append(f"{name}: no id")
        elif pid in seen:
            errors.append(f"{name}: id already used by {seen[pid]!r}")
        else:
            seen[pid] = p.get("title")

        gp = p.get("gridPos")
        if not gp or not all(isinstance(gp.get(k), int) for k in "xywh"):
            errors.append(f"{name}: no gridPos with integer x, y, w, h")
        elif gp["x"] < 0 or gp["y"] < 0 or gp["w"] < 1 or gp["h"] < 1 or gp["x"] + gp["w"] > 24:
            errors.append(f"{name}: gridPos {gp} is outside the 24-column grid")
        else:
            rects.append((name, gp))

        if p.get("type") == "row":
            continue
        if not p.get("datasource"):
            errors.append(f"{name}: no datasource")
        targets = p.get("targets") or []
        if not targets:
            errors.append(f"{name}: no targets")
        for t in targets:
            expr = t.get("expr")
            if not expr:
                errors.append(f"{name}: target {t.get('refId')} has no expr")
                continue
            errors += metric_errors(f"{name} target {t.get('refId')}", expr)

    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        errors += metric_errors(f"variable {v.get('name')!r}", f"{q or ''} {v.get('definition', '')}")

    for i, (a, ga) in enumerate(rects):
        for b, gb in rects[i + 1:]:
            if (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                    and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]):
                errors.append(f"{a} {ga} overlaps {b} {gb}")
    return errors, len(panels)


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        dash = json.load(f)
    errors, n = check(dash)
    for e in errors:
        print(e)
    if errors:
        return 1
    print(f"{sys.argv[1]}: {n} panels, ids unique, metrics known, no overlaps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
