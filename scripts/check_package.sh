#!/usr/bin/env bash
# The package as a user gets it: build the sdist and, from it, the wheel (as
# `python -m build` does from a clean clone), then install the wheel alone,
# without extras, into a fresh virtual environment and check what a service
# that only calls the nodes relies on:
#   - the sdist carries the build's inputs (setup.py, gen_protos.py, protos/)
#     and no generated stub; the wheel carries the stubs, their .pyi, the
#     py.typed markers, the Lua scripts, the migrations and the LICENSE;
#   - `import flashstock.client` and `import flashstock.lockmgr` work with
#     none of the server's dependencies installed;
#   - etcd discovery without the [etcd] extra says what to install;
#   - `mypy --strict` passes on tests/typing/client_example.py against the
#     installed wheel (it fails if py.typed is missing);
#   - `flashstock --version` prints the version, and plain `flashstock`
#     without the [server] extra fails naming `flashstock[server]`.
# Needs only python3 (3.11+) with venv and a package index. `make package-check`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flashstock-package.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

fail() {
  echo "package check FAILED: $*" >&2
  exit 1
}

# The tree as a clean clone has it: tracked and new files, nothing ignored
# (no generated stubs, no egg-info, no venv), so the build proves it can
# generate everything itself.
echo "==> package: copying the source tree"
mkdir "$WORK/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # (a file deleted in the work tree but still in the index is left out)
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | xargs -0 cp --parents --no-dereference -t "$WORK/src"
else
  cp -a . "$WORK/src"
  find "$WORK/src" \( -name '*_pb2*.py*' -o -name '*.egg-info' -o -name .venv \) -prune -exec rm -rf {} +
fi

echo "==> package: build and mypy in a tools environment"
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q build mypy

echo "==> package: python -m build (sdist, then the wheel from the sdist)"
"$WORK/tools/bin/python" -m build --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; fail "python -m build (log above)"; }
sdist=$(ls "$WORK"/dist/flashstock-*.tar.gz)
wheel=$(ls "$WORK"/dist/flashstock-*.whl)
echo "    $(basename "$sdist")  $(basename "$wheel")"

"$WORK/tools/bin/python" - "$sdist" "$wheel" <<'EOF' || fail "the sdist or the wheel lacks files (above)"
import sys, tarfile, zipfile

sdist, wheel = sys.argv[1:]
with tarfile.open(sdist) as tar:
    sdist_names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
with zipfile.ZipFile(wheel) as whl:
    wheel_names = set(whl.namelist())

problems = []
for name in ("setup.py", "pyproject.toml", "LICENSE", "scripts/gen_protos.py",
             "protos/flashstock/v1/stock.proto", "protos/flashstock/v1/admin.proto"):
    if name not in sdist_names:
        problems.append(f"sdist: no {name}")
problems += [f"sdist: generated {n} (the build makes it)" for n in sorted(sdist_names) if "_pb2" in n]

wanted = [f"flashstock/v1/{api}{suffix}" for api in ("stock", "admin")
          for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
wanted += [f"flashstock/{pkg}/py.typed" for pkg in ("client", "lockmgr", "server", "v1")]
wanted += ["flashstock/server/board/static/index.html", "flashstock/server/board/static/board.js",
           "flashstock/server/board/static/vendor/uplot/uPlot.iife.min.js",
           "flashstock/server/board/static/vendor/uplot/LICENSE"]
wanted += ["flashstock/server/store/lua/deduct.lua", "flashstock/server/ledger/migrations/env.py",
           "flashstock/server/ledger/migrations/versions/0001_initial.py"]
problems += [f"wheel: no {name}" for name in wanted if name not in wheel_names]
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names):
    problems.append("wheel: no LICENSE in its .dist-info")
for problem in problems:
    print("   ", problem, file=sys.stderr)
lua = sum(n.endswith(".lua") for n in wheel_names)
migrations = sum("/migrations/versions/" in n for n in wheel_names)
print(f"    wheel: {len(wheel_names)} files, {lua} Lua scripts, {migrations} migrations")
sys.exit(1 if problems else 0)
EOF

echo "==> package: the wheel alone (no extras) in a fresh environment"
"$PYTHON" -m venv "$WORK/client"
CLIENT="$WORK/client/bin"
"$CLIENT/python" -m pip install -q "$wheel"
# From $WORK, so that nothing of the source tree can be imported by accident.
cd "$WORK"
"$CLIENT/python" - <<'EOF' || fail "the client alone (above)"
import importlib.util, sys

import flashstock.client
import flashstock.lockmgr

server_only = ["sqlalchemy", "alembic", "psycopg", "typer", "rich", "redis", "redis_lock", "aetcd",
               "uvloop", "pydantic_settings", "prometheus_client", "psutil", "grpc_status"]
present = [name for name in server_only if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"    the client alone installed server dependencies: {', '.join(present)}")

# etcd discovery without aetcd: a clear refusal, not a hang.
from flashstock.client import ClientConfig, StockClient, Unavailable

config = ClientConfig(etcd="127.0.0.1:1", cluster="check", discovery_timeout_s=1.0, deadline_s=5.0)
try:
    with StockClient(config) as stock:
        stock.get_stock("sku")
except Unavailable as exc:
    if "flashstock[etcd]" not in str(exc):
        sys.exit(f"    etcd discovery without aetcd: {exc} (does not name flashstock[etcd])")
else:
    sys.exit("    etcd discovery without aetcd did not fail")
print("    import flashstock.client, flashstock.lockmgr: ok; no server dependency; etcd discovery names [etcd]")
EOF

echo "==> package: mypy --strict on tests/typing/client_example.py against the installed wheel"
"$WORK/tools/bin/mypy" --strict --no-incremental --python-executable "$CLIENT/python" \
  "$ROOT/tests/typing/client_example.py" || fail "mypy --strict on the client example"

echo "==> package: the flashstock command without the server extra"
version=$("$CLIENT/python" -c 'import importlib.metadata as m; print(m.version("flashstock"))')
out=$("$CLIENT/flashstock" --version 2>&1) || fail "flashstock --version exited non-zero: $out"
[[ "$out" == *"$version"* ]] || fail "flashstock --version printed '$out', not the version $version"
echo "    flashstock --version: $out"
if out=$("$CLIENT/flashstock" 2>&1); then
  fail "plain flashstock without the server extra exited 0: $out"
fi
[[ "$out" == *"flashstock[server]"* ]] || fail "plain flashstock did not name flashstock[server]: $out"
echo "    flashstock (no server extra): exits non-zero, names flashstock[server]"

echo "==> package: ok"
