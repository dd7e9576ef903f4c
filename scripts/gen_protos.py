"""Generate the Python gRPC stubs and .pyi type stubs from ``protos/``.

The one place stubs come from: the setuptools build hook (``setup.py``) runs
this on every build and editable install, and it can be run by hand after a
.proto change.  The output lands next to the .proto files (git-ignored) so the
package ``flashstock.v1`` maps onto ``protos/flashstock/v1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(protos: Path = PROTOS) -> list[Path]:
    """Run grpcio-tools' protoc over every .proto under ``protos``; return them."""
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency only

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(protos.rglob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {protos}")
    args = [
        "grpc_tools.protoc",
        f"-I{protos}",
        f"-I{include}",
        f"--python_out={protos}",
        f"--pyi_out={protos}",
        f"--grpc_python_out={protos}",
        *[str(f) for f in files],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: " + " ".join(args))
    for pkg in {f.parent for f in files}:
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated gRPC modules (see scripts/gen_protos.py)."""\n')
    return files


if __name__ == "__main__":
    for f in generate():
        print(f"generated stubs for {f.relative_to(ROOT)}")
    sys.exit(0)
