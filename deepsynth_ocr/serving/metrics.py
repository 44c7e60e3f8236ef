"""The server's Prometheus metrics, in a registry of its own (several servers can live in one process).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). The endpoint
label takes route paths only, so random 404 paths cannot blow up the number of series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ENDPOINTS = ("/v1/chat/completions", "/v1/ocr", "/v1/models", "/health", "/ready", "/metrics")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf"))
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, float("inf"))
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, float("inf"))
# Where a request's time goes: reading the body, decoding its image(s) (base64, image checks, PDF pages),
# waiting in the batching queue, its batch's preprocessing (the processor over the whole batch, to the
# device), its batch's generation, building the response.
STAGES = ("body_read", "decode", "queue_wait", "preprocess", "generate", "respond")


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("deepsynth_ocr_requests_total", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("deepsynth_ocr_request_latency_seconds", "Time from request to response, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("deepsynth_ocr_queue_depth", "Images waiting for generation.", registry=r)
        self.in_flight = Gauge("deepsynth_ocr_requests_in_flight", "Requests received and not yet answered.", registry=r)
        self.batch_size = Histogram("deepsynth_ocr_batch_size", "Images per generated batch.", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("deepsynth_ocr_batch_seconds", "Time one batch spends generating.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter("deepsynth_ocr_generated_tokens_total", "Tokens generated, over all requests.", registry=r)
        self.stage_seconds = Histogram("deepsynth_ocr_stage_seconds", "Seconds a request spends in each stage: "
                                       + ", ".join(STAGES) + ".", ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.errors = Counter("deepsynth_ocr_errors_total", "Requests refused or failed, by kind (the error code).",
                              ["kind"], registry=r)
        self.rate_limited = Counter("deepsynth_ocr_rate_limited_total", "Requests refused by a client's rate limit, by "
                                    "client (key-<SHA-256 prefix of its API key> or addr-<address>).", ["client"], registry=r)

    @staticmethod
    def endpoint(path: str) -> str:
        return path if path in ENDPOINTS else "other"

    def render(self) -> bytes:
        return generate_latest(self.registry)
