"""OpenTelemetry tracing and metrics as interceptors (the `otel` extra, `pip install
'/path/to/betterproto-nats[otel]'` from a checkout until it is on PyPI, which brings opentelemetry-api
only; configure an SDK and exporters as usual).

    serve(nc, impl, interceptors=[TracingInterceptor(), MetricsInterceptor()])
    MyServiceNatsClient(nc, interceptors=[TracingInterceptor(), MetricsInterceptor()])

Trace context travels in the W3C `traceparent` / `tracestate` headers of the opening request (Go peers
ignore them). Spans follow the OpenTelemetry RPC conventions: named `package.Service/Method`, kind
CLIENT or SERVER, with `rpc.system`, `rpc.service`, `rpc.method` and the call's code.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._version import __version__
from .core.errors import Overloaded, RpcError
from .schema.spec import Cardinality
from .features.interceptors import CallInfo, CallOutcome, Interceptor, Side

_SCOPE = "betterproto_nats"
RPC_SYSTEM = "nats"
# The call's code (`OK` or an ErrorCode), as `rpc.grpc.status_code` is for gRPC.
STATUS_CODE = "rpc.nats.status_code"


def _attributes(call: CallInfo) -> dict[str, Any]:
    return {
        "rpc.system": RPC_SYSTEM,
        "rpc.service": call.service,
        "rpc.method": call.method,
        "rpc.nats.shape": call.shape.value,
        "messaging.destination.name": call.subject,
    }


class TracingInterceptor(Interceptor):
    """A client span and a server span per call, parent and child across the wire; errors recorded
    (the handler's exception on the server, the RpcError on the client); message counts as attributes.
    The server span is the current span while the handler runs."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)
        self.propagator = propagator

    def _propagator(self) -> TextMapPropagator:
        return self.propagator or propagate.get_global_textmap()

    async def start(self, call: CallInfo) -> None:
        if call.side is Side.CLIENT:
            span = self.tracer.start_span(call.full_name, kind=SpanKind.CLIENT, attributes=_attributes(call))
            self._propagator().inject(call.headers, context=trace.set_span_in_context(span))
        else:
            parent = self._propagator().extract(call.headers)
            span = self.tracer.start_span(call.full_name, context=parent, kind=SpanKind.SERVER, attributes=_attributes(call))
            call.state[(self, "token")] = otel_context.attach(trace.set_span_in_context(span, parent))
        call.state[self] = span

    async def end(self, call: CallInfo, outcome: CallOutcome) -> None:
        span: trace.Span | None = call.state.pop(self, None)
        if span is None:
            return
        span.set_attribute(STATUS_CODE, outcome.code or "OK")
        span.set_attribute("rpc.nats.messages_sent", outcome.messages_sent)
        span.set_attribute("rpc.nats.messages_received", outcome.messages_received)
        if not outcome.ok:
            span.set_status(Status(StatusCode.ERROR, f"{outcome.code}: {outcome.message}"))
            raised = outcome.exception or RpcError(outcome.code or "", outcome.message, method=call.full_name)
            span.record_exception(raised)
        span.end()
        token = call.state.pop((self, "token"), None)
        if token is not None:
            otel_context.detach(token)


class MetricsInterceptor(Interceptor):
    """OpenTelemetry metrics per call: calls started and finished (by method and code), a duration
    histogram, messages and bytes each way, streams open now, and calls a service refused without
    starting them (by code; `rpc.nats.retry_after` says refusals of admission control)."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        self.started = meter.create_counter("rpc.nats.calls.started", unit="{call}", description="Calls started")
        self.finished = meter.create_counter("rpc.nats.calls.finished", unit="{call}", description="Calls finished, by code")
        self.duration = meter.create_histogram("rpc.nats.call.duration", unit="s", description="Call duration")
        self.messages = meter.create_counter("rpc.nats.messages", unit="{message}", description="Messages, by direction")
        self.bytes = meter.create_counter("rpc.nats.bytes", unit="By", description="Message bytes, by direction")
        self.open_streams = meter.create_up_down_counter("rpc.nats.streams.open", unit="{stream}", description="Streams open now")
        self.retries = meter.create_counter(
            "rpc.nats.client.retries", unit="{call}", description="Refused calls the client sent again (calling/refusals.py)"
        )
        self.refusals = meter.create_counter(
            "rpc.nats.calls.refused", unit="{call}", description="Calls refused before they started (admission control, stopping)"
        )

    @staticmethod
    def _labels(call: CallInfo) -> dict[str, str]:
        return {"rpc.system": RPC_SYSTEM, "rpc.service": call.service, "rpc.method": call.method, "rpc.nats.side": call.side.value}

    async def start(self, call: CallInfo) -> None:
        labels = self._labels(call)
        self.started.add(1, labels)
        if call.shape is not Cardinality.UNARY:
            self.open_streams.add(1, labels)

    async def refused(self, call: CallInfo, error: RpcError) -> None:
        labels: dict[str, str | bool] = {**self._labels(call), STATUS_CODE: error.code}
        labels["rpc.nats.overloaded"] = error.retry_after is not None
        if isinstance(error, Overloaded) and error.reason:
            labels["rpc.nats.refusal"] = error.reason  # what ran out: loop_lag, budget, concurrency, outbound
        self.refusals.add(1, labels)

    async def end(self, call: CallInfo, outcome: CallOutcome) -> None:
        labels = self._labels(call)
        if call.shape is not Cardinality.UNARY:
            self.open_streams.add(-1, labels)
        self.finished.add(1, {**labels, STATUS_CODE: outcome.code or "OK"})
        self.duration.record(outcome.duration, labels)
        if outcome.retries:
            self.retries.add(outcome.retries, labels)
        for direction, count, size in (
            ("sent", outcome.messages_sent, outcome.bytes_sent),
            ("received", outcome.messages_received, outcome.bytes_received),
        ):
            self.messages.add(count, {**labels, "rpc.nats.direction": direction})
            self.bytes.add(size, {**labels, "rpc.nats.direction": direction})
