"""Write docs/api.md from the comments in proto/registry/v1 (run by `make docs`).

The proto files are the API's source of truth; this renders their comments — services, RPCs
with scopes and errors, messages and fields, enums — as one Markdown page. A test checks that
the committed page is what this script produces, so it cannot drift from the protos.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from registry.v1 import options_pb2  # noqa: E402  (registers the (registry.v1.access) option)

PROTO_DIR = ROOT / "proto"
OUT = ROOT / "docs" / "api.md"


def _descriptors() -> descriptor_pb2.FileDescriptorSet:
    files = sorted(
        str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "registry/v1").glob("*.proto")
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.bin"
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", "--include_source_info",
             f"--descriptor_set_out={out}", *files],
            check=True,
        )  # fmt: skip
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(loc.path): loc.leading_comments.strip()
        for loc in file.source_code_info.location
        if loc.leading_comments.strip()
    }


def _text(comment: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in comment.splitlines()]
    return "\n".join(line for line in lines if not line.startswith("buf:lint"))


def _access(options: descriptor_pb2.MethodOptions) -> str:
    """The RPC's `(registry.v1.access)` option in words (the server enforces the same)."""
    if not options.HasExtension(options_pb2.access):
        return "Scope: **none declared — the server refuses this RPC to everyone**."
    access = options.Extensions[options_pb2.access]
    if access.WhichOneof("rule") == "scope":
        return f"Scope: `{access.scope}`."
    return "Scope: none; any authenticated agency may call it."


def render() -> str:
    """Return the Markdown page."""
    out = [
        "# API reference (registry.v1)",
        "",
        "Generated from the comments in `proto/registry/v1` by `scripts/proto_docs.py`",
        "(`make docs`); do not edit by hand.",
        "",
    ]
    for file in _descriptors().file:
        if not file.name.startswith("registry/"):
            continue
        comments = _comments(file)
        out += [f"## {file.name}", ""]
        for si, service in enumerate(file.service):
            out += [f"### service {service.name}", "", _text(comments.get((6, si), "")), ""]
            for mi, method in enumerate(service.method):
                streams = (
                    ("stream " if method.client_streaming else "")
                    + method.input_type.rsplit(".", 1)[-1]
                    + " → "
                    + ("stream " if method.server_streaming else "")
                    + method.output_type.rsplit(".", 1)[-1]
                )
                out += [f"#### {service.name}.{method.name}", "", f"`{streams}`", ""]
                out += [_access(method.options), ""]
                out += [_text(comments.get((6, si, 2, mi), "")), ""]
        for ei, enum in enumerate(file.enum_type):
            out += [f"### enum {enum.name}", "", _text(comments.get((5, ei), "")), ""]
            for vi, value in enumerate(enum.value):
                text = _text(comments.get((5, ei, 2, vi), "")).replace("\n", " ")
                out.append(f"- `{value.name}` = {value.number}: {text}")
            out.append("")
        for mi, message in enumerate(file.message_type):
            out += [f"### message {message.name}", "", _text(comments.get((4, mi), "")), ""]
            if message.field:
                out += ["| field | type | meaning |", "|---|---|---|"]
            for fi, field in enumerate(message.field):
                kind = (
                    field.type_name.rsplit(".", 1)[-1]
                    if field.type_name
                    else descriptor_pb2.FieldDescriptorProto.Type.Name(field.type)[5:].lower()
                )
                if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
                    kind = f"repeated {kind}"
                text = _text(comments.get((4, mi, 2, fi), "")).replace("\n", " ")
                text = text.replace("|", "\\|")
                out.append(f"| `{field.name}` | {kind} | {text} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
