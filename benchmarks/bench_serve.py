"""Load test of ``whisperforge serve`` on loopback: throughput, latency, errors, liveness.

Starts the real server in a subprocess (``python -m whisperforge.cli serve``, models
preloaded), then sends ``--requests`` OpenAI-style transcription requests from
``--concurrency`` client tasks (httpx, asyncio) with short clips (``samples/jfk.wav`` cut to
2.5 / 3.5 / 4.5 s), while a poller asks ``GET /health`` every ``--health-interval`` seconds.
Reports requests/s, audio seconds per wall second, p50/p95/max latency, errors by status,
and whether /health answered throughout (with its p95 latency and the deepest queue seen).
The server's queue (``--max-queue``) must hold ``concurrency - max_concurrency`` requests,
or the surplus gets 429 (counted as errors: that is the test of the limit, not of speed).

    python benchmarks/bench_serve.py --model whisper-tiny.en --requests 200 --concurrency 8 \\
        --out benchmarks/results/serve-tiny.en.json --markdown BENCHMARKS.md

Client and server share the machine: on 2 cores the client's share is small (it only sends
bytes) but not zero. Absolute numbers are this machine's; compare runs only side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JFK = REPO / "samples" / "jfk.wav"
CLIP_SECONDS = (2.5, 3.5, 4.5)
START_MARK, END_MARK = "<!-- serve:start -->", "<!-- serve:end -->"
STARTUP_TIMEOUT_S = 300.0


def make_clips(seconds=CLIP_SECONDS) -> list[tuple[bytes, float]]:
    """jfk.wav cut to each length: ``(wav bytes, duration in s)``."""
    import soundfile as sf

    from whisperforge.audio import SAMPLE_RATE, load_audio

    audio = load_audio(JFK)
    clips = []
    for s in seconds:
        buffer = io.BytesIO()
        sf.write(buffer, audio[: int(s * SAMPLE_RATE)], SAMPLE_RATE, format="WAV")
        clips.append((buffer.getvalue(), s))
    return clips


def free_port() -> int:
    from whisperforge.serve.testing import free_port as pick

    return pick()


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)  # successful requests, seconds
    statuses: dict[str, int] = field(default_factory=dict)
    audio_seconds: float = 0.0
    health: list[tuple[float, int, int]] = field(default_factory=list)  # latency, status, queue
    texts: set[str] = field(default_factory=set)


async def one_request(client, url: str, clip: tuple[bytes, float], model: str, run: Run):
    data, seconds = clip
    started = time.perf_counter()
    try:
        r = await client.post(
            url + "/v1/audio/transcriptions",
            files={"file": ("clip.wav", data, "audio/wav")},
            data={"model": model, "response_format": "json"},
        )
        status = str(r.status_code)
    except Exception as error:  # noqa: BLE001 - a load test counts every failure, by kind
        status = type(error).__name__
    elapsed = time.perf_counter() - started
    run.statuses[status] = run.statuses.get(status, 0) + 1
    if status == "200":
        run.latencies.append(elapsed)
        run.audio_seconds += seconds
        run.texts.add(r.json()["text"])


async def poll_health(client, url: str, interval: float, run: Run, stop: asyncio.Event):
    while not stop.is_set():
        started = time.perf_counter()
        try:
            r = await client.get(url + "/health", timeout=10)
            queue = r.json()["queue"]
            depth = queue["running"] + queue["waiting"]
            run.health.append((time.perf_counter() - started, r.status_code, depth))
        except Exception:  # noqa: BLE001 - an unanswered health check is the finding
            run.health.append((time.perf_counter() - started, 0, 0))
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass


async def load(url, clips, model, requests, concurrency, interval) -> tuple[Run, float]:
    import httpx

    run = Run()
    counter = iter(range(requests))
    stop = asyncio.Event()
    timeout = httpx.Timeout(600.0)

    async def worker(client):
        for i in counter:
            await one_request(client, url, clips[i % len(clips)], model, run)

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await one_request(client, url, clips[0], model, Run())  # warm-up, not counted
        poller = asyncio.create_task(poll_health(client, url, interval, run, stop))
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
        stop.set()
        await poller
    return run, wall


def start_server(args, port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "whisperforge.cli", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--models", args.model, "--preload",
        "--max-concurrency", str(args.max_concurrency), "--max-queue", str(args.max_queue),
    ]  # fmt: skip
    env = {**os.environ, "WHISPERFORGE_API_KEY": ""}
    log = open(args.server_log, "w") if args.server_log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(url: str, process: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} was not ready in {STARTUP_TIMEOUT_S:.0f} s")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarize(args, run: Run, wall: float) -> dict:
    ok = len(run.latencies)
    health_ok = [h for h in run.health if h[1] == 200]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/bench_serve.py " + shlex.join(sys.argv[1:]),
        "model": args.model,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "server": {"max_concurrency": args.max_concurrency, "max_queue": args.max_queue},
        "clips_seconds": list(CLIP_SECONDS),
        "wall_seconds": wall,
        "ok": ok,
        "errors": args.requests - ok,
        "statuses": run.statuses,
        "requests_per_second": ok / wall,
        "audio_seconds_per_wall_second": run.audio_seconds / wall,
        "latency_seconds": {
            "p50": percentile(run.latencies, 50),
            "p95": percentile(run.latencies, 95),
            "max": max(run.latencies, default=None),
            "mean": statistics.fmean(run.latencies) if run.latencies else None,
        },  # fmt: skip
        "health": {
            "polls": len(run.health),
            "ok": len(health_ok),
            "p95_seconds": percentile([h[0] for h in health_ok], 95),
            "max_seconds": max((h[0] for h in health_ok), default=None),
            "max_in_flight": max((h[2] for h in health_ok), default=0),
        },  # fmt: skip
        "distinct_texts": sorted(run.texts),
        "machine": machine(),
    }


def machine() -> dict:
    versions = {}
    for package in ("torch", "fastapi", "uvicorn", "httpx"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_average": list(os.getloadavg()), **versions,
    }  # fmt: skip


def to_markdown(r: dict) -> str:
    lat, health, m = r["latency_seconds"], r["health"], r["machine"]
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
    return "\n".join([
        f"### {r['model']}, {r['requests']} requests at concurrency {r['concurrency']} "
        f"({r['date']})",
        "",
        "Command:",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"Machine: {m['cpu']} ({m['cpus']} CPUs, shared by server and client), "
        f"torch {m['torch']}, fastapi {m['fastapi']}, uvicorn {m['uvicorn']}, Python "
        f"{m['python']}; load average at the end {', '.join(f'{x:.2f}' for x in m['load_average'])}. "  # noqa: E501
        f"Server: `--max-concurrency {r['server']['max_concurrency']} --max-queue "
        f"{r['server']['max_queue']}`, model preloaded, one warm-up request not counted. "
        f"Clips: samples/jfk.wav cut to {', '.join(f'{s:g}' for s in r['clips_seconds'])} s, "
        "in turn, `response_format=json`.",
        "",
        "| requests/s | audio s / wall s | p50 latency | p95 latency | max latency | errors "
        "| /health answered | /health p95 | most in flight |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {r['requests_per_second']:.2f} | {r['audio_seconds_per_wall_second']:.1f} "
        f"| {_s(lat['p50'])} | {_s(lat['p95'])} | {_s(lat['max'])} | {r['errors']} "
        f"| {health['ok']}/{health['polls']} | {_s(health['p95_seconds'], 3)} "
        f"| {health['max_in_flight']} |",
        "",
        f"Statuses: {statuses}. Wall time {r['wall_seconds']:.1f} s. Latency is end to end "
        "(upload, queue, decode, transcribe, reply); with "
        f"{r['server']['max_concurrency']} transcription(s) at a time and {r['concurrency']} "
        "clients most of it is waiting in the queue.",
    ])  # fmt: skip


def _s(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"


def write_markdown(path: Path, section: str) -> None:
    """Replace the text between the serve markers, or append the marked section."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{START_MARK}\n\n{section}\n\n{END_MARK}"
    if START_MARK in text and END_MARK in text:
        head, rest = text.split(START_MARK, 1)
        tail = rest.split(END_MARK, 1)[1]
        text = head + block + tail
    else:
        intro = (
            "## Server load test: `whisperforge serve`\n\n"
            "`benchmarks/bench_serve.py` runs the real server on loopback and sends "
            "OpenAI-style transcription requests from concurrent clients while polling "
            "`/health`. It checks that the server's limits hold under load (bounded queue, "
            "no errors, health answered throughout) and measures its throughput and latency "
            "on this machine.\n\n"
        )
        text = text.rstrip("\n") + "\n\n" + intro + block + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8, help="client tasks")
    parser.add_argument("--max-concurrency", type=int, default=1, help="server slots")
    parser.add_argument("--max-queue", type=int, default=16, help="server queue")
    parser.add_argument("--health-interval", type=float, default=0.5, help="seconds")
    parser.add_argument("--threads", type=int, help="torch threads of the server (default all)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, help="update this file's serve section")
    parser.add_argument("--server-log", type=Path, help="write the server's log here")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    clips = make_clips()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    try:
        wait_ready(url, server)
        run, wall = asyncio.run(
            load(url, clips, args.model, args.requests, args.concurrency, args.health_interval)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = summarize(args, run, wall)
    lat = report["latency_seconds"]
    print(
        f"{report['ok']}/{args.requests} ok in {wall:.1f} s: {report['requests_per_second']:.2f} "
        f"req/s, p50 {_s(lat['p50'])}, p95 {_s(lat['p95'])}, errors {report['errors']} "
        f"{report['statuses']}; /health {report['health']['ok']}/{report['health']['polls']}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        write_markdown(args.markdown, to_markdown(report))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
