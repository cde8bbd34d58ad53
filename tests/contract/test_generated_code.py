"""The committed generated code must be exactly what `make proto` produces from the protos."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _generate(out: Path) -> None:
    for root in ("proto", "gateway/proto"):
        _generate_from(root, out)


def _generate_from(root: str, out: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / root).rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            root,
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--python_out={out}",
            f"--mypy_out=quiet:{out}",
            f"--grpc_python_out={out}",
            f"--mypy_grpc_out=quiet:{out}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_generated_python_matches_protos(tmp_path: Path) -> None:
    _generate(tmp_path)
    committed = ROOT / "gen" / "python"
    fresh, current = _files(tmp_path), _files(committed)
    assert fresh == current, (
        f"generated files differ: missing {fresh - current}, extra {current - fresh}; run `make proto`"
    )
    stale = [f for f in sorted(fresh) if not filecmp.cmp(tmp_path / f, committed / f, shallow=False)]
    assert not stale, f"generated code is stale for {stale}; run `make proto` and commit the result"


def test_every_service_has_health_and_limits_documented() -> None:
    """Each public request field that takes text or lists declares its limits in the contract."""
    from tiermesh.analytics.v1 import analytics_service_pb2
    from tiermesh.common.v1 import limits_pb2
    from tiermesh.inference.v1 import inference_service_pb2
    from tiermesh.knowledge.v1 import knowledge_service_pb2
    from tiermesh.router.v1 import router_service_pb2

    unlimited = []
    for module in (router_service_pb2, inference_service_pb2, knowledge_service_pb2, analytics_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                for field in method.input_type.fields:
                    takes_input = field.type == field.TYPE_STRING or field.is_repeated
                    if takes_input and not field.GetOptions().HasExtension(limits_pb2.limits):
                        unlimited.append(f"{method.input_type.full_name}.{field.name}")
    assert not unlimited, f"request fields without declared limits: {unlimited}"


def test_generated_typescript_matches_protos(tmp_path: Path) -> None:
    """The web app's client (web/src/gen) is what `buf generate` makes from the protos now."""
    plugin = ROOT / "web" / "node_modules" / ".bin" / "protoc-gen-es"
    assert plugin.exists(), "the web app's packages are not installed: run `make proto` (it runs npm ci)"
    template = (
        '{"version": "v2", "plugins": [{"local": "%s", "out": "%s", "opt": ["target=ts"]}]}' % (plugin, tmp_path)  # noqa: UP031
    )
    subprocess.run([str(BIN / "buf"), "generate", "proto", "--template", template], cwd=ROOT, check=True)
    committed = ROOT / "web" / "src" / "gen"
    fresh, current = _files(tmp_path), _files(committed)
    assert fresh == current, f"generated files differ: missing {fresh - current}, extra {current - fresh}"
    stale = [f for f in sorted(fresh) if not filecmp.cmp(tmp_path / f, committed / f, shallow=False)]
    assert not stale, f"the web app's generated client is stale for {stale}; run `make proto` and commit the result"
