"""Regenerate the Python stubs for protos/ (the one copy shared by server and client).

Run from anywhere: `python scripts/gen_protos.py`. tests/test_protos.py fails when the
committed stubs differ from what this script produces, so commit its output.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    """Write the stubs for every .proto under protos/ into out_dir; return the files written."""
    import grpc_tools
    from grpc_tools import protoc  # a test/dev dependency, not needed at run time

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for src in sources:
        package_dir = out_dir / Path(src).parent
        # Make every directory on the way a regular package so imports resolve the same everywhere.
        for d in [package_dir, *package_dir.relative_to(out_dir).parents]:
            init = out_dir / d / "__init__.py"
            if init.parent != out_dir and not init.exists():
                init.write_text('"""Generated from protos/ by scripts/gen_protos.py."""\n')
        written.extend(sorted(package_dir.glob(Path(src).stem + "_pb2*")))
    return written


if __name__ == "__main__":
    for path in generate(ROOT):
        print(path.relative_to(ROOT))
    sys.exit(0)
