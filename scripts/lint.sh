#!/usr/bin/env bash
# The lint and type gates (`make lint`, run by .ci/run before the tests):
# ruff's rules, ruff's formatting, mypy (strict for client/ and lockmgr/), and
# hadolint over the node image's Dockerfile (any finding fails), and
# the Kubernetes manifests rendered and checked offline (scripts/check_k8s.py:
# kubectl kustomize, kubernetes-validate --strict, checkov).
# mypy cannot see the editable install's package mapping (flashstock.server ->
# server/ ...), so it reads a symlink tree under build/typing that mirrors
# pyproject's package-dir.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}

tree=build/typing/flashstock
mkdir -p "$tree"
ln -sfn ../../../client "$tree/client"
ln -sfn ../../../lockmgr "$tree/lockmgr"
ln -sfn ../../../server "$tree/server"
ln -sfn ../../../protos/flashstock/v1 "$tree/v1"

status=0
echo "==> ruff check"
"$BIN/ruff" check --output-format concise . || status=1
echo "==> ruff format --check"
"$BIN/ruff" format --check . || status=1
echo "==> mypy"
"$BIN/mypy" -p flashstock.client -p flashstock.lockmgr -p flashstock.server || status=1
echo "==> hadolint deploy/Dockerfile"
"$BIN/hadolint" --no-color deploy/Dockerfile || status=1
echo "==> kubernetes manifests (scripts/check_k8s.py)"
"$BIN/python" scripts/check_k8s.py || status=1
exit $status
