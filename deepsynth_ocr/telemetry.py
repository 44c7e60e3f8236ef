"""Optional OpenTelemetry traces: on only when the SDK is installed and the standard ``OTEL_*`` variables ask.

Traces are asked for by ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, or both comma-separated) or by an
OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``);
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn them off. The service name, resource
attributes, endpoint, headers and batching follow the SDK's own ``OTEL_*`` variables. Without the SDK
(``pip install 'deepsynth-ocr[otel]'``) or without those variables every helper here is a no-op on
``None`` and the kit runs unchanged.

Everything takes the tracer as an argument (``None`` = off) rather than reading a global, so a test
can hand the server or a job a tracer over the SDK's in-memory exporter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

log = logging.getLogger(__name__)


def wanted(env=None) -> bool:
    """Whether the environment asks for traces."""
    env = os.environ if env is None else env
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or exporter == "none":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


_process_tracers: dict[str, object] = {}


def tracer_from_env(service: str, env=None):
    """A tracer exporting as ``OTEL_*`` says, or ``None`` when traces are not asked for or the SDK is missing.
    One per service and process (a sweep's trials share it)."""
    if env is None and service in _process_tracers:
        return _process_tracers[service]
    tracer = _tracer_from_env(service, os.environ if env is None else env)
    if env is None:
        _process_tracers[service] = tracer
    return tracer


def _tracer_from_env(service: str, env):
    if not wanted(env):
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("OTEL_* variables ask for traces but opentelemetry-sdk is not installed "
                    "(pip install 'deepsynth-ocr[otel]'); running without traces")
        return None
    # OTEL_SERVICE_NAME, when set, wins over the kit's name (Resource.create reads it).
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(attributes))
    names = [n.strip().lower() for n in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",") if n.strip()]
    for name in names:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http "
                            "(pip install 'deepsynth-ocr[otel]'); no spans are exported")
                continue
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r (the kit knows otlp and console); ignored", name)
    trace.set_tracer_provider(provider)
    log.info("OpenTelemetry traces on (%s), service %s", ", ".join(names), env.get("OTEL_SERVICE_NAME") or service)
    return provider.get_tracer("deepsynth_ocr")


@contextlib.contextmanager
def span(tracer, name: str, attributes: dict | None = None, links=(), parent=None, kind: str = "INTERNAL"):
    """A span around the block (the current span's child, or ``parent``'s); yields it, or ``None`` when off."""
    if tracer is None:
        yield None
        return
    from opentelemetry import trace

    context = trace.set_span_in_context(parent) if parent is not None else None
    with tracer.start_as_current_span(name, context=context, attributes=_clean(attributes), kind=getattr(trace.SpanKind, kind),
                                      links=[trace.Link(s.get_span_context()) for s in links if s is not None]) as s:
        yield s


def record(tracer, name: str, parent, start_ns: int, end_ns: int, attributes: dict | None = None) -> None:
    """A finished span for something already timed (a queue wait, a batch's stages), under ``parent``."""
    if tracer is None or parent is None:
        return
    from opentelemetry import trace

    s = tracer.start_span(name, context=trace.set_span_in_context(parent), attributes=_clean(attributes), start_time=start_ns)
    s.end(end_time=end_ns)


def now_ns() -> int:
    return time.time_ns()


def _clean(attributes: dict | None) -> dict | None:
    # OpenTelemetry takes str/bool/int/float (or sequences of them); None values are dropped, not sent as "None".
    return {k: v for k, v in attributes.items() if v is not None} if attributes else None
