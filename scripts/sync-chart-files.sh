#!/usr/bin/env bash
# Copies the Prometheus rules (alerts/*.rules.yml), the Alertmanager
# inhibition rules (alerts/alertmanager-inhibit.yml) and the Grafana dashboards
# (dashboards/*.json) into the Helm chart, which can only read files inside
# itself. The sources are the truth; tests/chart.rs fails when the copies
# differ. Run after editing either.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
files="$root/charts/secret-canary/files"
mkdir -p "$files/dashboards"
rm -f "$files"/*.rules.yml "$files"/alertmanager-inhibit.yml "$files"/dashboards/*.json
cp "$root"/alerts/*.rules.yml "$root"/alerts/alertmanager-inhibit.yml "$files/"
cp "$root"/dashboards/*.json "$files/dashboards/"
echo "synced: $(cd "$files" && ls *.rules.yml alertmanager-inhibit.yml dashboards/*.json | tr '\n' ' ')"
