"""The committed stubs are exactly what scripts/gen_protos.py produces from protos/."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    assert written, "the generator wrote nothing"
    for fresh in written:
        rel = fresh.relative_to(tmp_path)
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is not committed: run python scripts/gen_protos.py"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{rel} is stale: run python scripts/gen_protos.py and commit the result"
        )
    committed_stubs = {p.relative_to(ROOT) for p in (ROOT / "signet").rglob("*_pb2*.py*")}
    assert committed_stubs == {p.relative_to(tmp_path) for p in written}, "stray generated files"
