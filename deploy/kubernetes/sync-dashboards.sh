#!/usr/bin/env bash
# Copy the Grafana dashboards from observability/grafana/dashboards into the kustomize component that ships them as
# ConfigMaps (kustomize reads no file outside its own directory). tests/test_deploy_manifests.py checks the copies.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
src="$root/observability/grafana/dashboards"
dst="$root/deploy/kubernetes/components/grafana-dashboards/dashboards"
mkdir -p "$dst"
rm -f "$dst"/*.json
cp "$src"/*.json "$dst"/
echo "copied $(ls "$src"/*.json | wc -l) dashboards to ${dst#"$root"/}"
