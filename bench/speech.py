"""Speech benchmark: transcription real-time factor (base, tiny.en) on a 30-second clip,
first-request latency including the lazy model load, offline synthesis of a 20-word sentence in
every response format, and 4 concurrent transcriptions through `alma serve` while /health is
timed.

Run: .venv/bin/python bench/speech.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `python bench/speech.py` puts bench/ first on sys.path, where a sibling script can shadow an
# application package (a bench/voice.py would hide `voice`): import from the root instead.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from alma.settings import Settings  # noqa: E402
from alma.voice import Clip, Speaker, Transcriber, VoiceSettings, decode  # noqa: E402
from alma.voice.audio import encode  # noqa: E402

TWENTY_WORDS = (
    "The old captain sailed to Lisbon every summer and told us stories about the sea "
    "and the storms he had seen."
)
STORY = [
    "My sister works as a nurse at the hospital in town.",
    "We are going to have dinner at a small restaurant tomorrow.",
    "The train leaves the station late in the evening.",
    "It is very hot today and the sky is clear.",
    "The old captain sailed to Lisbon in the summer.",
]


def row(what: str, figure: str) -> None:
    print(f"{what:<58} {figure}")


def clip_of(seconds: float) -> Clip:
    speaker = Speaker(preferred="espeak")
    parts: list[np.ndarray] = []
    total = 0.0
    while total < seconds:
        for sentence in STORY:
            spoken = speaker.speak(sentence, VoiceSettings(language="en"), "wav").audio
            part = decode(spoken, 60)
            parts += [part.samples, np.zeros(8000, np.float32)]
            total += part.seconds + 0.5
    samples = np.concatenate(parts)[: int(seconds * 16_000)]
    return Clip(samples.astype(np.float32), 16_000)


def transcription(settings: Settings, clip: Clip, short: Clip, cache: Path) -> None:
    for model in ("base", "tiny.en"):
        transcriber = Transcriber(
            model, cache, threads=settings.stt_threads, beam_size=settings.stt_beam_size
        )
        started = time.perf_counter()
        transcriber.transcribe(short, "en")
        first = time.perf_counter() - started
        runs = []
        for _ in range(2):
            started = time.perf_counter()
            transcriber.transcribe(clip, "en")
            runs.append(time.perf_counter() - started)
        transcriber.close()
        best = min(runs)
        row(
            f"{model}: first request ({short.seconds:.0f} s clip), load included",
            f"{first:.2f} s",
        )
        row(
            f"{model}: 30 s clip, beam {settings.stt_beam_size}",
            f"{best:.2f} s, real-time factor {best / clip.seconds:.3f} (runs: "
            + ", ".join(f"{r:.2f}" for r in runs)
            + ")",
        )


def synthesis() -> None:
    speaker = Speaker(preferred="espeak")
    settings = VoiceSettings(language="en")
    speaker.speak("warm up", settings, "wav")
    for response_format in ("wav", "mp3", "opus", "flac", "aac", "pcm"):
        times = []
        for _ in range(20):
            started = time.perf_counter()
            speaker.speak(TWENTY_WORDS, settings, response_format)
            times.append(time.perf_counter() - started)
        row(
            f"espeak-ng, 20 words, {response_format}",
            f"p50 {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms",
        )


def concurrent(clip: Clip, cache: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="alma-bench-speech-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALMA_")}
    env |= {"ALMA_DATA_DIR": str(folder / "data"), "ALMA_MODEL_CACHE_DIR": str(cache.parent)}
    alma = str(Path(sys.executable).parent / "alma")
    key = subprocess.run(
        [alma, "keys", "create", "--tenant", "bench"],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = 18_000 + os.getpid() % 1000
    base = f"http://127.0.0.1:{port}"
    log = (folder / "serve.log").open("w")
    server = subprocess.Popen(
        [alma, "serve", "--port", str(port)], env=env, cwd=folder, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        audio = encode(clip, "mp3")
        headers = {"Authorization": f"Bearer {key}"}
        results: list[tuple[int, float]] = []

        def transcribe() -> None:
            started = time.perf_counter()
            response = httpx.post(
                f"{base}/v1/audio/transcriptions",
                files={"file": ("clip.mp3", audio, "audio/mpeg")},
                headers=headers,
                timeout=300,
            )
            results.append((response.status_code, time.perf_counter() - started))

        workers = [threading.Thread(target=transcribe) for _ in range(4)]
        for worker in workers:
            worker.start()
        health: list[float] = []
        while any(w.is_alive() for w in workers):
            started = time.perf_counter()
            httpx.get(f"{base}/health", timeout=10)
            health.append(time.perf_counter() - started)
            time.sleep(0.1)
        for worker in workers:
            worker.join()
        ok = sum(status == 200 for status, _ in results)
        row(
            "4 concurrent transcriptions (30 s clip each), alma serve",
            f"{ok}/4 answered 200, slowest {max(t for _, t in results):.2f} s",
        )
        health.sort()
        row(
            f"/health meanwhile ({len(health)} checks)",
            f"p50 {statistics.median(health) * 1000:.1f} ms, "
            f"p95 {health[int(0.95 * (len(health) - 1))] * 1000:.1f} ms, "
            f"max {health[-1] * 1000:.1f} ms",
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    load = os.getloadavg()
    print(
        f"alma speech benchmark: {os.cpu_count()} CPUs, load average {load[0]:.2f} at start; "
        f"STT workers {settings.transcription_workers()}, threads {settings.stt_threads}, "
        f"beam {settings.stt_beam_size}"
    )
    cache = settings.model_cache() / "speech"
    clip = clip_of(30)
    short = clip_of(3)
    transcription(settings, clip, short, cache)
    synthesis()
    concurrent(clip, cache)


if __name__ == "__main__":
    main()
