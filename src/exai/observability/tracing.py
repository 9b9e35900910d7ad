"""OpenTelemetry spans for tool calls and provider calls.

Spans go through the OpenTelemetry API, which does nothing until a tracer provider is installed. Set
EXAI_OTEL_EXPORTER=console (or otlp, with opentelemetry-exporter-otlp installed and the standard OTEL_* variables)
to export them; the default is off.
"""

from __future__ import annotations

from opentelemetry import trace

from exai.observability.logging import get_logger

tracer = trace.get_tracer("exai")
log = get_logger(__name__)


def configure_tracing(exporter: str) -> None:
    """Install a tracer provider with the chosen exporter; needs the opentelemetry-sdk package."""
    if exporter == "off":
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.error("tracing_unavailable", remedy="pip install opentelemetry-sdk to export spans")
        return
    provider = TracerProvider(resource=Resource.create({"service.name": "exai-mcp-server"}))
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.error("tracing_unavailable", remedy="pip install opentelemetry-exporter-otlp-proto-http")
            return
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
