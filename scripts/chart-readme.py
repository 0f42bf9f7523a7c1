#!/usr/bin/env python3
"""Generate charts/secret-canary/README.md from its template and the chart.

    scripts/chart-readme.py           write README.md
    scripts/chart-readme.py --check   exit 1 (and say so) when README.md is stale

The template (charts/secret-canary/README.md.tpl) holds the prose; these
placeholders are filled from the chart, so the README never drifts from it:

  {{VALUES}}   one table row per key of values.yaml: its path, its default and
               the comment above it (or after it on the same line); `# --`
               starts a section's comment, as with helm-docs
  {{ALERTS}}   one row per alert of files/*.rules.yml: severity, team, for,
               keep_firing_for
  {{INHIBIT}}  files/alertmanager-inhibit.yml, verbatim
  {{VERSION}}, {{APP_VERSION}}  from Chart.yaml

No YAML library: values.yaml is read line by line (block mappings, flow
values on one line), which is all it uses; a line it cannot read is an error.
tests/chart.rs runs `--check`.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CHART = os.path.join(ROOT, "charts", "secret-canary")

KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-]+):(?P<rest>.*)$")


def split_comment(rest: str) -> tuple[str, str]:
    """`value  # comment` -> (value, comment), minding quotes."""
    quote = None
    for i, c in enumerate(rest):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def values_rows(text: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    stack: list[tuple[int, str]] = []  # (indent, key)
    comment: list[str] = []
    lines = text.splitlines()
    # The file's own header (up to the first blank line) is not a key's comment.
    start = 0
    while start < len(lines) and lines[start].startswith("#"):
        start += 1
    for n, line in enumerate(lines[start:], start + 1):
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            c = stripped[1:].strip()
            if c.startswith("--"):
                c = c[2:].strip()
            comment.append(c)
            continue
        if stripped.startswith("- "):
            # A block list item: part of its key's default, shown in values.yaml.
            comment = []
            continue
        m = KEY.match(line)
        if not m:
            sys.exit(f"chart-readme.py: values.yaml:{n}: cannot read {line!r}")
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = m.group("key")
        path = ".".join([k for _, k in stack] + [key])
        value, inline = split_comment(m.group("rest"))
        desc = " ".join(comment + ([inline] if inline else [])).strip()
        comment = []
        if value:
            rows.append((path, value, desc))
        else:
            # A mapping (or a block list): its children get their own rows.
            stack.append((indent, key))
            if desc:
                rows.append((path, "", desc))
    return rows


def alerts_rows() -> list[tuple[str, str, str, str, str]]:
    rows = []
    for path in sorted(glob.glob(os.path.join(CHART, "files", "*.rules.yml"))):
        current: dict[str, str] | None = None
        for line in open(path, encoding="utf-8"):
            s = line.strip()
            if s.startswith("- alert:") or s.startswith("- record:"):
                if current:
                    rows.append(current)
                current = {"alert": s.split(":", 1)[1].strip()} if s.startswith("- alert:") else None
                continue
            if current is None:
                continue
            for field in ("for", "keep_firing_for", "severity", "team"):
                if s.startswith(field + ":"):
                    current[field] = s.split(":", 1)[1].strip()
        if current:
            rows.append(current)
    return [(r["alert"], r.get("severity", ""), r.get("team", ""), r.get("for", "0s"), r.get("keep_firing_for", "")) for r in rows]


def cell(s: str) -> str:
    return s.replace("|", "\\|")


def generate() -> str:
    tpl = open(os.path.join(CHART, "README.md.tpl"), encoding="utf-8").read()
    chart = open(os.path.join(CHART, "Chart.yaml"), encoding="utf-8").read()
    version = re.search(r"^version:\s*(\S+)", chart, re.M).group(1)
    app_version = re.search(r"^appVersion:\s*\"?([^\"\s]+)", chart, re.M).group(1)
    values = ["| Key | Default | Description |", "|---|---|---|"]
    for path, default, desc in values_rows(open(os.path.join(CHART, "values.yaml"), encoding="utf-8").read()):
        shown = f"`{cell(default)}`" if default else ""
        values.append(f"| `{path}` | {shown} | {cell(desc)} |")
    alerts = ["| Alert | Severity | Team | for | keep_firing_for |", "|---|---|---|---|---|"]
    for name, sev, team, for_, keep in alerts_rows():
        alerts.append(f"| {name} | {sev} | {team} | {for_} | {keep} |")
    inhibit = open(os.path.join(CHART, "files", "alertmanager-inhibit.yml"), encoding="utf-8").read().rstrip("\n")
    out = (
        tpl.replace("{{VALUES}}", "\n".join(values))
        .replace("{{ALERTS}}", "\n".join(alerts))
        .replace("{{INHIBIT}}", inhibit)
        .replace("{{VERSION}}", version)
        .replace("{{APP_VERSION}}", app_version)
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when README.md differs from what would be generated")
    args = parser.parse_args()
    text = generate()
    target = os.path.join(CHART, "README.md")
    if args.check:
        current = open(target, encoding="utf-8").read() if os.path.exists(target) else ""
        if current != text:
            print(f"{target} is stale: run scripts/chart-readme.py", file=sys.stderr)
            return 1
        return 0
    with open(target, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
