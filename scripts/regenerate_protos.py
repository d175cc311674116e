"""Regenerate engine/proto/graph_def_pb2.py from engine/proto/graph_def.proto.

Needs grpcio-tools (`pip install grpcio-tools`); its protoc decides the gencode version, and
pyproject.toml's protobuf floor must be at least that version.

    python scripts/regenerate_protos.py
"""
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "engine" / "proto"


def main() -> int:
    # protoc names generated imports after the path under its include root, so stage the file
    # where its installed module path (gtt_rules/engine/proto) is also its include path.
    with tempfile.TemporaryDirectory() as tmp:
        staged = pathlib.Path(tmp) / "gtt_rules" / "engine" / "proto"
        staged.mkdir(parents=True)
        for proto in PROTO_DIR.glob("*.proto"):
            shutil.copy(proto, staged / proto.name)
        args = ["protoc", f"-I{tmp}", f"--python_out={tmp}"]
        args += [str(p.relative_to(tmp)) for p in staged.glob("*.proto")]
        if protoc.main(args) != 0:
            return 1
        for generated in staged.glob("*_pb2.py"):
            shutil.copy(generated, PROTO_DIR / generated.name)
            print(f"wrote {PROTO_DIR / generated.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
