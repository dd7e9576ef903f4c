"""Render and check deploy/kubernetes/ offline (run by scripts/lint.sh, so by `make lint` and .ci/run).

    .venv/bin/python scripts/check_k8s.py               # render every overlay, validate, checkov
    .venv/bin/python scripts/check_k8s.py --no-checkov  # the same without checkov (its install takes a minute)
    .venv/bin/python scripts/check_k8s.py render dev    # print one overlay's rendered YAML

Without a kubectl whose kustomize is v4+, `check` says so and skips, except under CI=true, where it fails.

1. Renders each overlay with `kubectl kustomize` (kubectl >= 1.27, kustomize v5: the manifests use
   `labels`, `patches` and Components, which Debian 12's kubectl 1.20 and its kustomize v2.0.3 lack)
   into build/k8s/<overlay>.yaml.
2. Validates every object against the Kubernetes schemas kubernetes-validate bundles (its newest
   release, strict: unknown fields fail), except the custom resources (ServiceMonitor,
   PrometheusRule, CloudNativePG's Cluster), which no core schema describes: they are skipped by
   kind, and named.
3. Runs checkov (framework kubernetes) over the rendered files; every check it would fail is either
   fixed or skipped in the manifest with its reason (checkov.io/skipN annotations). checkov pins
   dependencies the project's own venv cannot take (packaging < 24, which pytest refuses), so it lives
   in a venv of its own, build/checkov-venv, made here on first use.

tests/unit/test_k8s_policy.py renders through `render` below and checks the policy (probes,
PDBs, resources, securityContext, pinned images) and the settings (`flashstock serve --check-config`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy/kubernetes"
OVERLAYS = ("dev", "production", "production-operators")
OUT = ROOT / "build/k8s"
CHECKOV = "checkov==3.3.30"
CHECKOV_VENV = ROOT / "build/checkov-venv"
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("postgresql.cnpg.io/v1", "Cluster"),
}
"""Custom resources: validated by their operators' CRDs, not by Kubernetes' own schemas."""
MIN_KUSTOMIZE = (4, 0)


class CheckError(Exception):
    """A check failed; the message says which and why."""


def kubectl() -> str:
    """The kubectl to render with; CheckError when there is none, or its kustomize is too old."""
    path = shutil.which("kubectl")
    if path is None:
        raise CheckError(
            "kubectl not found: the manifests render with `kubectl kustomize` (kubectl >= 1.27, kustomize v5)"
        )
    out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, check=False)
    found = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
    match = re.match(r"v?(\d+)\.(\d+)", found)
    if match is None or (int(match[1]), int(match[2])) < MIN_KUSTOMIZE:
        raise CheckError(
            f"{path}'s kustomize is {found or 'unknown'}: the manifests need kustomize v4 or newer "
            "(kubectl >= 1.27); Debian 12's kubernetes-client (kubectl 1.20, kustomize v2.0.3) is too old"
        )
    return path


def render(overlay: str) -> str:
    """One overlay's objects, as `kubectl kustomize` renders them."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / overlay)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise CheckError(f"kubectl kustomize {overlay}: {out.stderr.strip()}")
    return out.stdout


def validate(overlay: str, rendered: str) -> None:
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    core = [d for d in docs if (d["apiVersion"], d["kind"]) not in CUSTOM_KINDS]
    skipped = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs if d not in core)
    path = OUT / f"{overlay}.core.yaml"
    path.write_text(yaml.safe_dump_all(core, sort_keys=False))
    validator = Path(sys.executable).parent / "kubernetes-validate"
    out = subprocess.run(
        [str(validator), "--strict", "--quiet", str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0 or "WARN" in out.stdout + out.stderr:
        raise CheckError(f"kubernetes-validate {overlay}:\n{out.stdout}{out.stderr}")
    note = f"; custom resources not validated: {', '.join(skipped)}" if skipped else ""
    print(f"  {overlay}: {len(core)} objects valid (kubernetes-validate --strict){note}")


def checkov_bin() -> Path:
    exe = CHECKOV_VENV / "bin/checkov"
    if not exe.exists():
        print(f"==> installing {CHECKOV} into {CHECKOV_VENV.relative_to(ROOT)}", flush=True)
        venv.create(CHECKOV_VENV, with_pip=True)
        subprocess.run([str(CHECKOV_VENV / "bin/python"), "-m", "pip", "install", "-q", CHECKOV], check=True)
    return exe


def checkov(files: list[Path]) -> None:
    args = [str(checkov_bin()), "--framework", "kubernetes", "--compact", "--output", "json"]
    for f in files:
        args += ["-f", str(f)]
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise CheckError(f"checkov did not run (exit {out.returncode}):\n{out.stdout}{out.stderr}") from None
    results = [r.get("results", {}) for r in (report if isinstance(report, list) else [report])]
    failed = [c for r in results for c in r.get("failed_checks", [])]
    if failed or out.returncode != 0:
        lines = [f"  {c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})" for c in failed]
        raise CheckError("checkov found failed checks (fix them, or skip each with its reason):\n" + "\n".join(lines))
    passed = sum(len(r.get("passed_checks", [])) for r in results)
    skipped = sorted({c["check_id"] for r in results for c in r.get("skipped_checks", [])})
    print(f"  checkov: {passed} checks passed, 0 failed; skipped with a reason in the manifests: {', '.join(skipped)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-checkov", action="store_true", help="skip checkov")
    parser.add_argument("command", nargs="?", choices=["check", "render"], default="check")
    parser.add_argument("overlay", nargs="?", choices=OVERLAYS)
    args = parser.parse_args()
    if args.command == "check" and os.environ.get("CI") != "true":
        try:
            kubectl()
        except CheckError as exc:
            # A developer without kubectl can still `make lint`; CI (CI=true) cannot skip.
            print(f"check_k8s: SKIPPED, {exc}", file=sys.stderr)
            return 0
    try:
        if args.command == "render":
            if args.overlay is None:
                parser.error("render needs an overlay")
            sys.stdout.write(render(args.overlay))
            return 0
        OUT.mkdir(parents=True, exist_ok=True)
        files = []
        for overlay in OVERLAYS:
            rendered = render(overlay)
            path = OUT / f"{overlay}.yaml"
            path.write_text(rendered)
            files.append(path)
            validate(overlay, rendered)
        if not args.no_checkov:
            checkov(files)
    except CheckError as exc:
        print(f"check_k8s: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
