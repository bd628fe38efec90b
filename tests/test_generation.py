"""The plugin: betterproto's output plus ours, the same via buf and protoc, typed, and clear errors."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from betterproto_nats_plugin import options as opts
from betterproto_nats_plugin import persist

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PLUGIN = BIN / "protoc-gen-python_nats"
BETTERPROTO = BIN / "protoc-gen-python_betterproto"
PROTOS = [
    "streaming/v1/stream_demo.proto",
    "fixtures/hard/v1/hard.proto",
    "fixtures/options/v1/options.proto",
    "fixtures/codec/v1/codec.proto",
    "fixtures/persist/v1/persist.proto",
]
API = ("betterproto_nats._api_v2", None, "_nats")
OURS = {API, ("typing", "overload", "_overload")}
CODECS = "\n# Protobuf codecs of the messages above"


def protoc(out: Path, *files: str, plugin: Path = PLUGIN, opt: str = "", include: Path = ROOT / "proto") -> subprocess.CompletedProcess[str]:
    name = plugin.name.removeprefix("protoc-gen-")
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", f"-I{ROOT / 'proto'}", f"--plugin={plugin}"]
    args.append(f"--{name}_out={opt + ':' if opt else ''}{out}")
    return subprocess.run([*args, *files], capture_output=True, text=True, cwd=ROOT)


def imports(code: str) -> set[tuple[str, str | None, str | None]]:
    found: set[tuple[str, str | None, str | None]] = set()
    for node in ast.parse(code).body:
        if isinstance(node, ast.Import):
            found |= {(a.name, None, a.asname) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= {(("." * node.level) + (node.module or ""), a.name, a.asname) for a in node.names}
        elif isinstance(node, ast.If):  # TYPE_CHECKING block
            found |= imports(ast.unparse(node.body))  # type: ignore[arg-type]
    return found


def body(code: str) -> str:
    """Everything after the imports, up to our NATS classes and codecs."""
    lines = code.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("class ", "@dataclass")))
    text = "\n".join(lines[start:])
    markers = ("(_nats.ErrorCode):", "NatsMethods:", "(_nats.ServiceBase):")
    cut = [text.rfind("\nclass ", 0, text.find(m)) for m in markers if m in text]
    cut += [text.find(CODECS)] if CODECS in text else []
    cut += [text.find("\n# The proto files of this module")] if "\n_NATS_SCHEMA = " in text else []  # the embedded schema
    return (text[: min(cut)] if cut else text).rstrip()


@pytest.mark.parametrize("proto", PROTOS)
def test_output_is_betterproto_output_plus_nats_classes(tmp_path: Path, proto: str) -> None:
    assert protoc(tmp_path / "ours", proto).returncode == 0
    theirs = protoc(tmp_path / "theirs", proto, plugin=BETTERPROTO, opt="typing.310")
    assert theirs.returncode == 0, theirs.stderr
    package_dir = Path(proto).parent
    ours_code = (tmp_path / "ours" / package_dir / "__init__.py").read_text()
    theirs_code = (tmp_path / "theirs" / package_dir / "__init__.py").read_text()
    assert body(ours_code) == body(theirs_code)
    assert imports(ours_code) - imports(theirs_code) == (OURS if "(_nats.ServiceBase)" in ours_code else {API})
    assert imports(theirs_code) <= imports(ours_code)


def test_buf_and_protoc_give_identical_files(tmp_path: Path) -> None:
    assert protoc(tmp_path, *PROTOS, "fixtures/codec/v1/echo.proto").returncode == 0  # (echo.proto: the CLI's tests)
    for generated in tmp_path.rglob("*.py"):
        assert generated.read_text() == (ROOT / "gen" / generated.relative_to(tmp_path)).read_text(), generated


def test_options_proto_emits_nothing(tmp_path: Path) -> None:
    result = protoc(tmp_path, "natsmicro/options.proto")
    assert result.returncode == 0, result.stderr
    assert [p for p in tmp_path.rglob("*.py") if p.stat().st_size] == []


def test_only_requested_packages_are_emitted(tmp_path: Path) -> None:
    assert protoc(tmp_path, "fixtures/hard/v1/hard.proto").returncode == 0
    assert not (tmp_path / "fixtures" / "common" / "v1" / "__init__.py").exists()  # a dependency, not requested
    assert not (tmp_path / "natsmicro").exists()


def test_grpclib_false_leaves_grpclib_out_and_mypy_passes(tmp_path: Path) -> None:
    out = tmp_path / "gen_nogrpc"
    (out).mkdir()
    result = protoc(out, *PROTOS, "fixtures/common/v1/common.proto", opt="grpclib=false")
    assert result.returncode == 0, result.stderr
    code = (out / "streaming" / "v1" / "__init__.py").read_text()
    assert "grpclib" not in code and "StreamDemoServiceStub" not in code
    assert "class StreamDemoServiceNatsClient" in code
    # mypy finds betterproto_nats through the editable install (`make setup` links it in strict mode).
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", "gen_nogrpc"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout


def test_generated_code_is_black_formatted() -> None:
    import black

    for path in (ROOT / "gen").rglob("*.py"):
        code = path.read_text()
        assert black.format_str(code, mode=black.Mode()) == code, path


def test_include_dir_holds_options_proto() -> None:
    result = subprocess.run([sys.executable, "-m", "betterproto_nats_plugin", "--include"], capture_output=True, text=True)
    assert (Path(result.stdout.strip()) / "natsmicro" / "options.proto").is_file()


HEADER = 'syntax = "proto3";\npackage bad.v1;\nimport "natsmicro/options.proto";\n'
MESSAGES = """
message Req { string id = 1; }
message Resp { string id = 1; }
message Chunk { bytes data = 1; }
message TwoFields { bytes data = 1; string name = 2; }
message NotBytes { string data = 1; }
message Repeated { repeated bytes data = 1; }
message Payload { bytes payload = 1; }
message Keyed { string id = 1; double score = 2; repeated string tags = 3; Resp nested = 4; bytes blob = 5; int32 count = 6; }
"""
KV = 'rpc Get(Keyed) returns (Resp) { option (natsmicro.kv_store) = {bucket: "b" key_template: "k.{id}" %s}; }'


BAD = {
    "chunked_unary": ("rpc Get(Req) returns (Resp) { option (natsmicro.chunked_io) = {}; }", "Svc.Get", "not unary"),
    "chunked_bidi": ("rpc Get(stream Chunk) returns (stream Chunk) { option (natsmicro.chunked_io) = {}; }", "Svc.Get", "bidirectional"),
    "chunked_two_fields": ("rpc Get(Req) returns (stream TwoFields) { option (natsmicro.chunked_io) = {}; }", "Svc.Get", "exactly one field"),
    "chunked_not_bytes": ("rpc Get(Req) returns (stream NotBytes) { option (natsmicro.chunked_io) = {}; }", "Svc.Get", "must be of type bytes"),
    "chunked_repeated": ("rpc Put(stream Repeated) returns (Resp) { option (natsmicro.chunked_io) = {}; }", "Svc.Put", "must be singular"),
    "chunked_wrong_field": ("rpc Get(Req) returns (stream Payload) { option (natsmicro.chunked_io) = {}; }", "Svc.Get", "chunk_field is 'data'"),
    "chunked_negative": ("rpc Get(Req) returns (stream Chunk) { option (natsmicro.chunked_io) = {default_chunk_size: -1}; }", "Svc.Get", "must not be negative"),
    "stream_on_unary": ("rpc Get(Req) returns (Resp) { option (natsmicro.stream) = {max_inflight: 4}; }", "Svc.Get", "streaming methods only"),
    "pending_limit": ("rpc Get(Req) returns (Resp) { option (natsmicro.endpoint) = {pending_msg_limit: -2}; }", "Svc.Get", "pending_msg_limit"),
    "endpoint_timeout": ("rpc Get(Req) returns (Resp) { option (natsmicro.endpoint) = {timeout: {seconds: -1}}; }", "Svc.Get", "timeout must not be negative"),
    "prefix": ('option (natsmicro.service) = {subject_prefix: "a b"};', "Svc", "subject_prefix"),
    "wildcard_prefix": ('option (natsmicro.service) = {subject_prefix: "a.*"};', "Svc", "subject_prefix"),
    "version": ('option (natsmicro.service) = {version: "one"};', "Svc", "semantic version"),
    "name": ('option (natsmicro.service) = {name: "my svc"};', "Svc", "name 'my svc'"),
    "error_code_case": ('option (natsmicro.service) = {error_codes: "outOfStock"};', "Svc", "UPPER_SNAKE_CASE"),
    "error_code_builtin": ('option (natsmicro.service) = {error_codes: "NOT_FOUND"};', "Svc", "built in"),
    "same_endpoint": ("rpc GetItem(Req) returns (Resp) {}\n rpc get_item(Req) returns (Resp) {}", "Svc.get_item", "also GetItem's"),
    "prefix_newline": ('option (natsmicro.service) = {subject_prefix: "a.b\\n"};', "Svc", "subject_prefix"),
    "name_newline": ('option (natsmicro.service) = {name: "svc\\n"};', "Svc", "name 'svc\\n'"),
    "version_newline": ('option (natsmicro.service) = {version: "1.0.0\\n"};', "Svc", "semantic version"),
    "version_unicode_digit": ('option (natsmicro.service) = {version: "1\u0661.0.0"};', "Svc", "semantic version"),
    "error_code_newline": ('option (natsmicro.service) = {error_codes: "SOLD_OUT\\n"};', "Svc", "UPPER_SNAKE_CASE"),
    "kv_unknown_field": (KV.replace("k.{id}", "k.{nope}") % "", "Svc.Get", "names {nope}, which is not a field of bad.v1.Keyed"),
    "kv_fields_not_separated": (KV.replace("k.{id}", "k.{count}{id}") % "", "Svc.Get", "rule 'fields are separated'"),
    "helper_collision": (KV % "" + "\n rpc GetGetCached(Req) returns (Resp) {}", "Svc.Get", "'get_get_cached' collides"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_generation_errors_name_file_method_and_rule(tmp_path: Path, case: str) -> None:
    service_body, where, rule = BAD[case]
    (tmp_path / "bad.proto").write_text(HEADER + MESSAGES + f"service Svc {{\n{service_body}\n}}\n")
    result = protoc(tmp_path / "out", "bad.proto", include=tmp_path)
    assert result.returncode != 0
    assert "bad.proto" in result.stderr and where in result.stderr and rule in result.stderr, result.stderr
    assert not list((tmp_path / "out").rglob("*.py"))


def test_name_collision_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "clash.proto").write_text(
        HEADER + "message Req {}\nmessage EdgeNatsClient {}\nservice Edge { rpc Get(Req) returns (Req) {} }\n"
    )
    result = protoc(tmp_path / "out", "clash.proto", include=tmp_path)
    assert result.returncode != 0
    assert "EdgeNatsClient" in result.stderr and "message" in result.stderr


def test_upper_case_package_is_refused(tmp_path: Path) -> None:
    (tmp_path / "upper.proto").write_text('syntax = "proto3";\npackage Bad.V1;\nmessage M {}\n')
    result = protoc(tmp_path / "out", "upper.proto", include=tmp_path)
    assert result.returncode != 0 and "lower case" in result.stderr


def test_editions_are_refused(tmp_path: Path) -> None:
    (tmp_path / "ed.proto").write_text('edition = "2023";\npackage ed.v1;\nmessage M { string a = 1; }\n')
    result = protoc(tmp_path / "out", "ed.proto", include=tmp_path)
    assert result.returncode != 0 and "editions" in result.stderr


def _generate_big(tmp_path: Path, body: str, opt: str = "") -> str:
    """Generate `package big.v1` with `body` through protoc; the module's code."""
    (tmp_path / "big.proto").write_text(f'syntax = "proto3";\npackage big.v1;\n{body}')
    result = protoc(tmp_path / "out", "big.proto", include=tmp_path, opt=opt)
    assert result.returncode == 0, result.stderr
    return (tmp_path / "out" / "big" / "v1" / "__init__.py").read_text()


# Generation is linear in elements: betterproto's comment lookup scanned every source location of the
# file for each enum value and field, our template searched the service's methods for each method, and
# the garbage collector's full passes over black's syntax tree grew with the file. Measured on 2 shared
# cores, in-process: 10,000 enum values 190 s before, 14 s now (the request's parsing is most of it);
# 1,000 methods 37 s before, 19 s now (black's formatting is most of it). These tests: about 10 s each.
@pytest.mark.timeout(60)
def test_ten_thousand_enum_values_generate_in_linear_time(tmp_path: Path) -> None:
    values = "\n".join(f"  {'// Value %d.' % i if i % 100 == 0 else ''}\n  BIG_V{i} = {i};" for i in range(10_000))
    code = _generate_big(tmp_path, f"// The big enum.\nenum Big {{\n{values}\n}}\n")
    assert code.count('"""Value ') == 100 and '"""The big enum."""' in code
    assert 'V9999 = 9999' in code and '    V9900 = 9900\n    """Value 9900."""' in code


@pytest.mark.timeout(60)
def test_thousand_methods_generate_in_linear_time(tmp_path: Path) -> None:
    rpcs = "\n".join(f"  rpc Call{i}(Req) returns (Resp) {{}}" for i in range(1_000))
    messages = "message Req { string id = 1; }\nmessage Resp { string id = 1; }\n"
    code = _generate_big(tmp_path, f"{messages}service Svc {{\n{rpcs}\n}}\n", opt="grpclib=false")
    assert code.count("SvcNatsMethods.call999,") == 2  # in the service's method list and the client's call
    assert "    async def call999(self, request: Req) -> Resp:" in code and "    def call999(" in code


def _keyed_index() -> "persist.RequestIndex":
    from betterproto.lib.google.protobuf import DescriptorProto, FieldDescriptorProto
    from betterproto.lib.google.protobuf import FieldDescriptorProtoLabel as L
    from betterproto.lib.google.protobuf import FieldDescriptorProtoType as T

    def field(name: str, kind: T, label: L = L.LABEL_OPTIONAL) -> FieldDescriptorProto:
        return FieldDescriptorProto(name=name, type=kind, label=label)

    keyed = DescriptorProto(
        name="Keyed",
        field=[
            field("id", T.TYPE_STRING),
            field("score", T.TYPE_DOUBLE),
            field("tags", T.TYPE_STRING, L.LABEL_REPEATED),
            field("nested", T.TYPE_MESSAGE),
            field("blob", T.TYPE_BYTES),
            field("count", T.TYPE_INT32),
            field("on", T.TYPE_BOOL),
            field("name", T.TYPE_STRING),
        ],
    )
    return persist.RequestIndex({".bad.v1.Keyed": keyed}, {}, lambda name: name)


PERSIST_RULES = {
    "empty template": ({"key_template": ""}, "key_template is empty"),
    "no bucket": ({"bucket": ""}, "bucket must be set"),
    "bad bucket": ({"bucket": "a.b"}, "bucket 'a.b' may contain only"),
    "double": ({"key_template": "{score}"}, "Keyed.score is a double"),
    "repeated": ({"key_template": "{tags}"}, "Keyed.tags is repeated"),
    "message": ({"key_template": "{nested}"}, "Keyed.nested is a message"),
    "bytes": ({"key_template": "{blob}"}, "Keyed.blob is a bytes"),
    "literal": ({"key_template": "k {id}*"}, "cannot be part of a key"),
    "empty token": ({"key_template": "{id}."}, "empty token"),
    "template newline": ({"key_template": "k.{id}\n"}, "cannot be part of a key"),
    "bucket newline": ({"bucket": "b\n"}, "may contain only"),
    "adjacent fields": ({"key_template": "{count}{id}"}, "{count}{id} has no text between the fields"),
    "adjacent strings": ({"key_template": "k.{id}{name}"}, "rule 'fields are separated'"),
    "digit after int": ({"key_template": "{count}1.{id}"}, "the text after {count} starts with '1'"),
    "letter after bool": ({"key_template": "{on}s.{id}"}, "the text after {on} starts with 's'"),
    "short key_ttl": ({"key_ttl": timedelta(milliseconds=500)}, "key_ttl must be at least 1 s"),
    "negative ttl": ({"ttl": timedelta(seconds=-1)}, "ttl must not be negative"),
    "history": ({"max_history": 65}, "max_history must be between 1 and 64"),
}


@pytest.mark.parametrize("case", sorted(PERSIST_RULES))
def test_persistence_option_rules(case: str) -> None:
    """Each rule of the persistence options (the plugin adds file and method, checked above)."""
    changes, rule = PERSIST_RULES[case]
    options = opts.KVStoreOptions(**{"bucket": "b", "key_template": "k.{id}", **changes})
    with pytest.raises(persist.PersistError) as refused:
        persist.kv_store(options, ".bad.v1.Keyed", _keyed_index())
    assert rule in str(refused.value)
    objects = opts.ObjectStoreOptions(bucket="o", key_template=options.key_template if "key_template" in changes else "{id}")
    if "key_template" in changes:  # the object store's keys follow the same rules
        with pytest.raises(persist.PersistError):
            persist.object_store(objects, ".bad.v1.Keyed", _keyed_index())


def test_key_templates_give_one_key_per_request() -> None:
    """Separated non-string fields are unambiguous; free text before another field is allowed with a
    warning that names the rule (the runtime refuses its values holding the separator)."""
    index = _keyed_index()
    for fine in ("{id}", "k.{count}.{on}.{id}", "{count}-{count}/{id}.json", "{on}x{count}.{id}"):
        assert persist.kv_store(opts.KVStoreOptions(bucket="b", key_template=fine), ".bad.v1.Keyed", index).warnings == []
    warned = persist.kv_store(opts.KVStoreOptions(bucket="b", key_template="{id}.{name}"), ".bad.v1.Keyed", index).warnings
    assert len(warned) == 1 and "rule 'free text is last'" in warned[0] and "whose id holds '.' are refused" in warned[0]
    objects = persist.object_store(opts.ObjectStoreOptions(bucket="o", key_template="{name}/{count}"), ".bad.v1.Keyed", index)
    assert len(objects.warnings) == 1 and "holds '/'" in objects.warnings[0]


def test_free_text_before_another_field_warns_with_file_method_and_rule(tmp_path: Path) -> None:
    """The Layout fixture's kind of template ({tier}.{id}.v{version}...): two string fields could make two
    requests share a key; generation goes on with a warning saying what the runtime refuses."""
    (tmp_path / "kv.proto").write_text(
        HEADER + MESSAGES + "service Svc { " + KV.replace("k.{id}", "{id}.{count}.{id}") % "" + " }\n"
    )
    result = protoc(tmp_path / "out", "kv.proto", include=tmp_path)
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "warning" in line)
    assert "kv.proto" in warning and "Svc.Get" in warning and "rule 'free text is last'" in warning, warning
    assert "kv_store=_nats.KvStoreSpec" in (tmp_path / "out" / "bad" / "v1" / "__init__.py").read_text()


def test_persistence_options_resolve_as_the_go_plugin_does() -> None:
    index = _keyed_index()
    assert "write_mode" not in persist.kv_store(opts.KVStoreOptions(bucket="b", key_template="{id}"), ".bad.v1.Keyed", index).args
    with_ttl = persist.kv_store(opts.KVStoreOptions(bucket="b", key_template="{id}", key_ttl=timedelta(seconds=5)), ".bad.v1.Keyed", index)
    assert with_ttl.args["write_mode"] == "_nats.WriteMode.COMPARE_AND_SET" and with_ttl.args["key_ttl"] == "5.0"
    explicit = opts.KVStoreOptions(
        bucket="b", key_template="{id}", key_ttl=timedelta(seconds=5), write_mode=opts.KVWriteMode.KV_WRITE_MODE_LAST_WRITE_WINS
    )
    assert "write_mode" not in persist.kv_store(explicit, ".bad.v1.Keyed", index).args
    assert persist.kv_store(opts.KVStoreOptions(bucket="b", key_template="fixed"), ".bad.v1.Keyed", index).args["key"] == (
        "_nats.KeyTemplate('fixed')"
    )


def test_persistence_options_on_other_shapes_warn_and_are_ignored(tmp_path: Path) -> None:
    """As the Go plugin does: only unary methods (and, for the object store, chunked downloads) persist."""
    (tmp_path / "kv.proto").write_text(
        HEADER
        + MESSAGES
        + 'service Svc { rpc Get(Req) returns (stream Resp) { option (natsmicro.kv_store) = {bucket: "b" key_template: "{id}"}; } }\n'
    )
    result = protoc(tmp_path / "out", "kv.proto", include=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "Svc.Get" in result.stderr and "applies to unary methods only" in result.stderr
    code = (tmp_path / "out" / "bad" / "v1" / "__init__.py").read_text()
    assert "kv_store=" not in code and "get_get_cached" not in code


def test_unknown_plugin_parameter_is_an_error(tmp_path: Path) -> None:
    result = protoc(tmp_path, "streaming/v1/stream_demo.proto", opt="grpclib=maybe")
    assert result.returncode != 0 and "unknown parameter" in result.stderr


def test_go_style_proto_compiles_unchanged(tmp_path: Path) -> None:
    """A proto written for the Go plugin (every option it knows) generates with ours."""
    go_style = textwrap.dedent(
        """
        service Store {
          option (natsmicro.service) = {
            subject_prefix: "store.v1" name: "store" version: "1.2.3" description: "d"
            metadata: {key: "a" value: "b"} timeout: {seconds: 3} json: false
            error_codes: "SOLD_OUT" queue_group_disabled: false
          };
          rpc Get(Req) returns (Resp) {
            option (natsmicro.endpoint) = {timeout: {seconds: 1} metadata: {key: "k" value: "v"} pending_msg_limit: 100 pending_bytes_limit: 1024};
            option (natsmicro.kv_store) = {bucket: "b" key_template: "{id}" ttl: {seconds: 1} max_history: 2 client_only: true
              write_mode: KV_WRITE_MODE_COMPARE_AND_SET persist_failure_policy: KV_PERSIST_FAILURE_POLICY_REQUIRED compression: true};
          }
          rpc Put(stream Chunk) returns (Resp) {
            option (natsmicro.chunked_io) = {chunk_field: "data" default_chunk_size: 1024};
            option (natsmicro.stream) = {max_inflight: 8 ordered: true};
            option (natsmicro.object_store) = {bucket: "o" key_template: "{id}" compression: true};
          }
        }
        """
    )
    (tmp_path / "go.proto").write_text(HEADER + MESSAGES + go_style)
    result = protoc(tmp_path / "out", "go.proto", include=tmp_path)
    assert result.returncode == 0, result.stderr


def test_runtime_and_plugin_pass_mypy() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", "runtime", "plugin"], capture_output=True, text=True, cwd=ROOT
    )
    assert checked.returncode == 0, checked.stdout


BUF_TEMPLATES = {
    "missing": ("version: v2\nplugins:\n  - local: protoc-gen-python_nats\n    out: gen\n", True),
    "present": ("version: v2\nplugins:\n  - local: protoc-gen-python_nats\n    out: gen\n    strategy: all\n", False),
    "after an opt list": (
        "version: v2\nplugins:\n  - local: protoc-gen-python_nats\n    opt:\n      - grpclib=false\n    strategy: 'all'\n",
        False,
    ),
    "on another plugin": (
        "version: v2\nplugins:\n- local: protoc-gen-other\n  strategy: all\n- local: protoc-gen-python_nats\n  out: gen\n",
        True,
    ),
    "v1 style": ("version: v1\nplugins:\n  - plugin: python_nats\n    out: gen\n    strategy: directory\n", True),
    "not ours": ("version: v2\nplugins:\n  - local: protoc-gen-go\n    out: gen\n", False),
}


@pytest.mark.parametrize("case", BUF_TEMPLATES)
def test_buf_template_without_strategy_all_is_found(case: str) -> None:
    from betterproto_nats_plugin.bufcheck import entry_lacks_strategy_all

    text, lacks = BUF_TEMPLATES[case]
    assert entry_lacks_strategy_all(text) is lacks


def test_template_is_read_only_under_buf_generate(tmp_path: Path) -> None:
    from betterproto_nats_plugin.bufcheck import strategy_problem

    (tmp_path / "buf.gen.yaml").write_text(BUF_TEMPLATES["missing"][0])
    (tmp_path / "other.yaml").write_text(BUF_TEMPLATES["present"][0])
    assert strategy_problem(["/usr/bin/buf", "generate"], tmp_path) == str(tmp_path / "buf.gen.yaml")
    assert strategy_problem(["buf", "generate", "--template", "other.yaml"], tmp_path) is None
    assert strategy_problem(["buf", "generate", "--template=buf.gen.yaml"], tmp_path) is not None
    assert strategy_problem(["buf", "generate", "--template", '{"version": "v2"}'], tmp_path) is None  # inline
    assert strategy_problem(["protoc", "-I", "."], tmp_path) is None
    assert strategy_problem([], tmp_path) is None


def test_buf_without_strategy_all_fails_with_the_fix(tmp_path: Path) -> None:
    """A package in two folders: buf's per-folder runs would keep one folder's messages only."""
    (tmp_path / "buf.yaml").write_text("version: v2\nmodules:\n  - path: proto\n")
    (tmp_path / "buf.gen.yaml").write_text(BUF_TEMPLATES["missing"][0])
    for folder, message in (("shop/v1", "Order"), ("shop/v1/extra", "Extra")):
        (tmp_path / "proto" / folder).mkdir(parents=True)
        (tmp_path / "proto" / folder / f"{message.lower()}.proto").write_text(
            f'syntax = "proto3";\npackage shop.v1;\nmessage {message} {{ string id = 1; }}\n'
        )
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}
    failed = subprocess.run([BIN / "buf", "generate"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert failed.returncode != 0
    assert "add `strategy: all` to the protoc-gen-python_nats entry" in failed.stderr
    assert str(tmp_path / "buf.gen.yaml") in failed.stderr
    (tmp_path / "buf.gen.yaml").write_text(BUF_TEMPLATES["present"][0])
    done = subprocess.run([BIN / "buf", "generate"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    module = (tmp_path / "gen" / "shop" / "v1" / "__init__.py").read_text()
    assert "class Order(" in module and "class Extra(" in module
