"""Throughput of the OCR server with dynamic batching over the same server at ``max_batch_size=1``.

Two ``deepsynth-ocr serve`` processes on the bundled tiny base (``configs/smoke.yaml``), one after the
other on loopback, identical but for ``--max-batch-size``. N concurrent clients (one asyncio task
each, one process) send a bounded number of chat completion requests for the smoke domain's eval
images, each with its own ``X-Request-Id``. Every reply is checked: each id answered exactly once,
with status 200 and the text ``deepsynth-ocr infer`` writes for that image. Rounds alternate between
the two servers so load from other processes hits both alike; the best round of each is compared.
Reported: requests/s, the ratio, p50/p99 latency, the mean batch size and the mean time per request in
each stage (body read, decode, queue wait, generate, respond) from the server's /metrics.
Target: >= 3x at 16 concurrent clients.

    python benchmarks/serve_load.py [--clients 16] [--requests 256] [--rounds 3] [--max-batch-size 16]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted((ROOT / "data" / "smoke-domain" / "images").glob("eval_*.png"))[:64]
CONFIG = ROOT / "configs" / "smoke.yaml"


def expected_texts() -> dict[str, str]:
    """What ``deepsynth-ocr infer`` writes for each image (the server must answer the same)."""
    from deepsynth_ocr.config import RunConfig
    from deepsynth_ocr.jobs.infer import infer

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "infer.jsonl"
        infer([str(p) for p in IMAGES], out, RunConfig.from_yaml(CONFIG))
        return {Path(r["file"]).name: r["text"] for r in map(json.loads, out.read_text().splitlines())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(max_batch_size: int, max_queue: int):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEEPSYNTH_OCR_API_KEYS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "deepsynth_ocr.cli", "serve", "-c", str(CONFIG), "--port", str(port),
                             "--max-batch-size", str(max_batch_size), "-s", f"serve.max_queue={max_queue}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the server (max_batch_size={max_batch_size}) did not start")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()  # SIGTERM: the server's graceful stop
        proc.wait(60)


async def load(url: str, clients: int, requests: int, urls: list[tuple[str, str]], expected: dict[str, str]) -> dict:
    """``requests`` requests from ``clients`` concurrent clients; their latencies and the checks."""
    todo = asyncio.Queue()
    for i in range(requests):
        todo.put_nowait(i)
    answered: dict[str, int] = {}
    latencies, wrong = [], []

    async def client(http: httpx.AsyncClient):
        while not todo.empty():
            i = todo.get_nowait()
            name, image_url = urls[i % len(urls)]
            rid = f"req-{i}"
            body = {"model": "tiny-base", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": "Free OCR."}]}]}
            start = time.perf_counter()
            reply = await http.post(f"{url}/v1/chat/completions", json=body, headers={"X-Request-Id": rid})
            latencies.append(time.perf_counter() - start)
            got = reply.headers.get("x-request-id")
            answered[got] = answered.get(got, 0) + 1
            if reply.status_code != 200 or reply.json()["choices"][0]["message"]["content"] != expected[name]:
                wrong.append((rid, reply.status_code, reply.text[:200]))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - start
    once = answered == {f"req-{i}": 1 for i in range(requests)}
    q = statistics.quantiles(latencies, n=100)
    return {"rps": requests / seconds, "p50": q[49], "p99": q[98], "ok": once and not wrong, "wrong": wrong[:3]}


def stage_means(url: str) -> dict[str, float]:
    """Mean milliseconds per request in each stage, from the server's ``deepsynth_ocr_stage_seconds`` histogram."""
    sums, counts = {}, {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == "deepsynth_ocr_stage_seconds_sum":
                sums[s.labels["stage"]] = s.value
            elif s.name == "deepsynth_ocr_stage_seconds_count":
                counts[s.labels["stage"]] = s.value
    return {stage: 1000 * sums[stage] / counts[stage] for stage in sums if counts.get(stage)}


def mean_batch(url: str) -> float:
    samples = {s.name: s.value for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
               for s in family.samples if not s.labels}
    return samples["deepsynth_ocr_batch_size_sum"] / samples["deepsynth_ocr_batch_size_count"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch-size", type=int, default=16)
    args = ap.parse_args()
    expected = expected_texts()
    urls = [(p.name, "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()) for p in IMAGES]
    print(f"{args.clients} concurrent clients, {args.requests} requests per round, {args.rounds} rounds, "
          f"{len(IMAGES)} smoke-domain eval images, tiny base, loopback")
    sizes = (args.max_batch_size, 1)
    rounds: dict[int, list[dict]] = {b: [] for b in sizes}
    with server(sizes[0], max(64, 2 * args.clients)) as batched, server(1, max(64, 2 * args.clients)) as single:
        urls_by = dict(zip(sizes, (batched, single), strict=True))
        for url in urls_by.values():
            asyncio.run(load(url, args.clients, 2 * args.clients, urls, expected))  # warm-up
        for _ in range(args.rounds):
            for b, url in urls_by.items():
                rounds[b].append(asyncio.run(load(url, args.clients, args.requests, urls, expected)))
        results = {}
        for b, url in urls_by.items():
            results[b] = max(rounds[b], key=lambda r: r["rps"]) | {
                "all_ok": all(r["ok"] for r in rounds[b]), "mean_batch": mean_batch(url), "stages": stage_means(url),
                "wrong": [w for r in rounds[b] for w in r["wrong"]][:3]}
    for batch, r in results.items():
        print(f"max_batch_size={batch:>2}: {r['rps']:6.1f} requests/s, p50 {r['p50'] * 1000:6.1f} ms, "
              f"p99 {r['p99'] * 1000:6.1f} ms, mean batch {r['mean_batch']:.1f}, "
              f"every request answered once with infer's text: {r['all_ok']}")
        print("  mean ms per request by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items()))
        for rid, status, text in r["wrong"]:
            print(f"  wrong: {rid} {status} {text}")
    ratio = results[args.max_batch_size]["rps"] / results[1]["rps"]
    print(f"throughput ratio, dynamic batching over max_batch_size=1: {ratio:.2f}x (target >= 3x)")
    if not all(r["all_ok"] for r in results.values()):
        raise SystemExit("some request was not answered exactly once with the expected text")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import record

    record.main("serve_load", main)
