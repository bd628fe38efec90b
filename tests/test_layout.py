"""The runtime's layout (issue 21): a sans-I/O core, packages in layers with an acyclic import graph
and no upward imports, every module path from before the packages still importable with its names."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"

# Who may import whom: a module imports its own package's modules and those of lower layers only
# (packages on one layer never import each other: `calling` and `serving` are the two sides).
LAYERS = {
    "_version": 0,
    "core": 0,  # the protocol's rules, pure
    "encoding": 1,  # bytes <-> messages
    "net": 1,  # NATS
    "schema": 2,  # what generated code declares
    "health": 2,  # liveness, loop lag, admission
    "streaming": 3,  # one direction of a stream, a call's v2 session
    "features": 4,  # chunks, persistence, interceptors, otel, retry, logs
    "calling": 5,  # the client side
    "serving": 5,  # the service side
}
SURFACE = 6  # the package's own modules: its public surface and the old module paths
NOT_IN_CORE = ("asyncio", "nats", "betterproto", "socket", "selectors", "threading")


def modules() -> dict[str, Path]:
    """Every module of the runtime by its dotted name inside the package ("core.headers")."""
    found = {}
    for path in sorted(RUNTIME.rglob("*.py")):
        parts = path.relative_to(RUNTIME).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(modules of the runtime, top-level names of other packages) that `name` imports, wherever in
    the file, except under `if TYPE_CHECKING:`."""
    known = modules()
    parts = [part for part in name.split(".") if part]
    package = parts if path.name == "__init__.py" else parts[:-1]
    inside: set[str] = set()
    outside: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            outside.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                outside.add((node.module or "").split(".")[0])
            else:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                for alias in node.names:
                    sub = f"{target}.{alias.name}" if target else alias.name
                    inside.add(sub if sub in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    inside.discard("")
    return inside, outside


def layer(module: str) -> int:
    return LAYERS.get(module.split(".")[0], SURFACE)


def unit(module: str) -> str:
    """The package a module belongs to ("" for the package's own top-level modules)."""
    return module.split(".")[0] if "." in module or module in LAYERS else ""


def test_the_core_imports_no_io() -> None:
    """Nothing in `core` imports asyncio, nats or anything of the runtime outside `core`."""
    for name, path in modules().items():
        if unit(name) != "core":
            continue
        inside, outside = imports(name, path)
        assert not outside & set(NOT_IN_CORE), f"{name} imports {outside & set(NOT_IN_CORE)}"
        assert all(unit(module) == "core" for module in inside), f"{name} imports {inside}"


def test_the_core_loads_without_the_event_loop() -> None:
    """Loaded on its own in a fresh interpreter (the package's __init__ imports everything, so a bare
    parent stands in for it), the core leaves asyncio and nats unimported."""
    core = sorted(name for name in modules() if unit(name) == "core")
    script = (
        "import importlib, sys, types\n"
        f"parent = types.ModuleType('betterproto_nats'); parent.__path__ = [{str(RUNTIME)!r}]\n"
        "sys.modules['betterproto_nats'] = parent\n"
        f"for name in {core!r}: importlib.import_module('betterproto_nats.' + name)\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('asyncio', 'nats', 'betterproto')]\n"
        "print(','.join(loaded))\n"
    )
    run = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ""


def test_the_import_graph_is_layered_and_acyclic() -> None:
    graph = {name: imports(name, path)[0] for name, path in modules().items()}
    for name, targets in graph.items():
        for target in targets:
            if unit(target) == unit(name) and unit(name):
                continue  # within a package
            if unit(name) == "":
                continue  # the surface imports anything below it (and itself, acyclic: checked below)
            assert layer(target) < layer(name), f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
    # acyclic: a depth-first search finds no way back
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, "import cycle: " + " -> ".join([*path, name])
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if target != name and not (name and target == name.split(".")[0]):  # a module and its package
                visit(target, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])


def test_nothing_below_the_surface_imports_an_old_path() -> None:
    """The shims at the old module paths are for users and old tests only."""
    for name, path in modules().items():
        if unit(name):
            for target in imports(name, path)[0]:
                assert unit(target) or target == "_version", f"{name} imports the old path {target}"


# Every module of the runtime before its packages, with the public names it defined: all still there.
OLD_MODULES: dict[str, str] = {
    "_api_v1": "API_VERSION",
    "_api_v2": "API_VERSION",
    "admission": (
        "Admission Callers DEFAULT_MAX_LOOP_LAG MAX_CALLERS MAX_RETRY_AFTER MIN_RETRY_AFTER OPEN_BURST OpenGate "
        "Refusal caller_of retry_hint"
    ),
    "batch": "BATCHED_BODY_LIMIT MAX_BATCH_BYTES pack unpack",
    "bus": "BusConnection DEFAULT_MAX_PAYLOAD InMemoryBus subject_matches",
    "chunks": (
        "BlobReader BlobReceiving Bytes ChunkCodec ChunkReceiver ChunkSender HEADER_ALLOWANCE Progress split "
        "write_atomically"
    ),
    "client": (
        "BidiStream BidiStreamCall CallState ClientBase ClientCall ClientStream DownloadCall DownloadStream "
        "HANDSHAKE_TIMEOUT InvalidTransition Pending PendingStream ServerStream ServerStreamCall UploadStream "
        "bidi client_stream download server_stream unary"
    ),
    "codec": "Codec JSON PROTO",
    "context": "CallContext call_context current_call set_current_call",
    "discovery": "Discovery EndpointRecord",
    "errors": "ErrorCode Overloaded RpcError",
    "flow": "AckPolicy Acknowledger EMPTY_QUEUE FlowWindow NO_ACKS NoAcks SendCredit Unlimited",
    "interceptors": (
        "BidiInterceptor CallInfo CallOutcome Chain ClientStreamInterceptor Direction Interceptor "
        "LoggingInterceptor ServerStreamInterceptor Side UnaryInterceptor outcome_of"
    ),
    "liveness": "DEFAULT_HEARTBEAT Liveness MAX_HEARTBEAT MIN_HEARTBEAT MISSED_BEATS past_stall",
    "load": "LoopLag PERIOD SAMPLES",
    "logs": "RateLimitedLog",
    "mux": "Handler InboxMux MUX_PENDING_BYTES MUX_PENDING_MESSAGES let_go",
    "nats_compat": (
        "DirectDelivery PermissionErrors ReadGuard Requests deliver_directly flush_ordered guard_reads header_block new_inbox "
        "outbound_pending publish_nowait unsubscribe_quietly"
    ),
    "negotiation": (
        "DEFAULT_WINDOW_BYTES DEFAULT_WINDOW_MESSAGES ServerTerms Window clamp_heartbeat client_heartbeat "
        "client_offer confirmation confirmed longest_heartbeat request_deadline server_terms shared_peer"
    ),
    "otel": "MetricsInterceptor RPC_SYSTEM STATUS_CODE TracingInterceptor",
    "peers": "BEAT_BODY_LIMIT MAX_ENTRIES Member PeerGroup PeerLiveness REPEAT SENDING",
    "persistence": (
        "BLOB_BUFFER BlobCopy Bytes DEFAULT_TIMEOUT JetStreamUnavailable KvBucket MAX_KEY_LENGTH "
        "MAX_OBJECT_RESPONSE MAX_PENDING_BYTES MAX_PENDING_WRITES OBJECT_CHUNK ObjectBucket ObjectWriter "
        "Persistence Persister StoreKeys Stores is_removed key_problem render_key store_error"
    ),
    "protocol": (
        "BLOB_SIZE DEADLINE DESCRIPTION END_TRUE ERROR ERROR_CODE Frame FrameKind MAX_BATCH MAX_ERROR_CODE "
        "MAX_ERROR_TEXT MAX_RETRY_AFTER_MS NO_RESPONDERS_STATUS PROTOCOL_HEADERS REPLY_TO "
        "RESPONSE_PROTOCOL_HEADERS RETRY_AFTER STATUS STREAM_ACK STREAM_BATCH STREAM_CANCEL STREAM_COUNT "
        "STREAM_END STREAM_HEARTBEAT STREAM_INBOX STREAM_PEER STREAM_SENT STREAM_SEQ STREAM_VERSION "
        "STREAM_WINDOW STREAM_WINDOW_BYTES VERSION_2 caller_headers check_size classify clip "
        "error_from_headers error_headers header_int is_control is_no_responders is_reserved message_size "
        "parse_uint quote sanitize user_headers"
    ),
    "pytest_plugin": "nats_bus nats_server_url",
    "responders": (
        "BidiResponder ClientStreamResponder DEFAULT_STREAM_IDLE_TIMEOUT InvalidTransition "
        "OLD_STYLE_SUBSCRIBE_WAIT RESPONDERS RequestStream Responder ServedMethod ServerState "
        "ServerStreamResponder ServingPolicy UnaryCall UploadRequests V1_HOLD_LIMIT answer peer_faults"
    ),
    "retry": "RetryPolicy",
    "runner": "DEFAULT_CONNECT_WAIT connect load main run",
    "server": "DEFAULT_GRACE_PERIOD Endpoint STOP_QUIET Server check_handlers overloads serve",
    "service_base": "ServiceBase",
    "session": "CallEnds StreamSession",
    "spec": (
        "Cardinality ChunkSpec KeyField KeyKind KeyTemplate KvStoreSpec MethodSpec ObjectStoreSpec "
        "PersistPolicy ServiceSpec WriteMode"
    ),
    "stored": "KvEntry KvWatch StoredBlob kv_get kv_history kv_purge kv_watch object_delete object_get object_open",
    "streams": (
        "Deadline FIRST_HEADERS_ROOM FIRST_HOP_WAIT FRAME_OVERHEAD FirstHop Inbox RECONNECT_CHECK "
        "StreamReader StreamWriter V1_BUFFER_BYTES V1_BUFFER_MESSAGES"
    ),
    "subjects": "DEFAULT_INBOX_PREFIX InboxPolicy MAX_SUBJECT first_token_prefix is_literal",
    "testing": "NatsServer serve_in_memory server_binary start_cluster",
    "transport": (
        "MessageHandler NatsTransport NowaitPublisher OutboundBuffer Subscription Transport outbound_backlog "
        "publish publish_now subscribe_direct transport_of"
    ),
    "wire": (
        "DECODERS DecodeError Decoder ENCODERS EPOCH Encoder Fields MAX_DEPTH UNSET append build "
        "check_framing encode_message extend fields_of nonzero put put_varint read_bool read_bool_value "
        "read_bytes read_bytes_value read_double read_double_value read_duration read_enum read_fixed32 "
        "read_fixed64 read_float read_float_value read_int32 read_int32_value read_int64 read_int64_value "
        "read_key read_length read_message read_message_type read_packed_bool read_packed_double "
        "read_packed_enum read_packed_fixed32 read_packed_fixed64 read_packed_float read_packed_int32 "
        "read_packed_int64 read_packed_sfixed32 read_packed_sfixed64 read_packed_sint32 read_packed_sint64 "
        "read_packed_uint32 read_packed_uint64 read_sfixed32 read_sfixed64 read_sint32 read_sint64 "
        "read_string read_string_value read_timestamp read_uint32 read_uint32_value read_uint64 "
        "read_uint64_value read_varint register skip_field varint write_bool write_bool_value write_bytes "
        "write_bytes_value write_double write_double_value write_duration write_enum write_fixed32 "
        "write_fixed64 write_float write_float_value write_int32 write_int32_value write_int64 "
        "write_int64_value write_message write_packed_bool write_packed_double write_packed_enum "
        "write_packed_fixed32 write_packed_fixed64 write_packed_float write_packed_int32 write_packed_int64 "
        "write_packed_sfixed32 write_packed_sfixed64 write_packed_sint32 write_packed_sint64 "
        "write_packed_uint32 write_packed_uint64 write_sfixed32 write_sfixed64 write_sint32 write_sint64 "
        "write_string write_string_value write_timestamp write_uint32 write_uint32_value write_uint64 "
        "write_uint64_value"
    ),
}


@pytest.mark.parametrize("old", sorted(OLD_MODULES))
def test_old_module_paths_keep_their_names(old: str) -> None:
    module = importlib.import_module(f"betterproto_nats.{old}")
    missing = [name for name in OLD_MODULES[old].split() if not hasattr(module, name)]
    assert not missing, f"betterproto_nats.{old} lost {missing}"


MAX_CLASS_LINES = 250


def test_no_class_is_longer_than_250_lines() -> None:
    """Classes with one job each: from `class` to the next top-level statement, trailing blank lines
    and comments aside."""
    too_long = []
    for path in sorted(RUNTIME.rglob("*.py")):
        lines = path.read_text().splitlines()
        body = ast.parse("\n".join(lines)).body
        for index, node in enumerate(body):
            if not isinstance(node, ast.ClassDef):
                continue
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            end = body[index + 1].lineno - 1 if index + 1 < len(body) else len(lines)
            while end > start and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
                end -= 1
            if end - start + 1 > MAX_CLASS_LINES:
                too_long.append(f"{path.relative_to(RUNTIME)}:{node.name} ({end - start + 1} lines)")
    assert not too_long, too_long
