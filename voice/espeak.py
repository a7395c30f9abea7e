"""espeak-ng through ctypes: the offline voice. The library and its voice data ship in the
`espeakng-loader` package (no system install); it has no Python API, so this is one."""

from __future__ import annotations

import ctypes
import threading
from functools import cache
from pathlib import Path

import espeakng_loader
import numpy as np
import numpy.typing as npt

_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns once the callback has all
_CHARS_UTF8 = 1
_RATE = 1  # espeakRATE, words per minute
DEFAULT_WPM = 150  # espeak-ng says 175; slower is clearer, to people and to Whisper
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class Espeak:
    """The library is one process-wide state machine: one instance, one call at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[npt.NDArray[np.int16]] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as the library uses it
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        self.rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng could not start")
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _: object) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def synthesize(self, text: str, voice: str, wpm: int) -> npt.NDArray[np.int16]:
        """`voice` is a language, optionally with a variant: `es`, `en-us+f3`."""
        encoded = text.encode()
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self._lib.espeak_SetParameter(_RATE, wpm, 0)
            self._chunks = []
            self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


@cache
def espeak() -> Espeak:
    """The process's one espeak-ng, started on first use."""
    return Espeak()


def _data() -> Path:
    return Path(espeakng_loader.get_data_path())


@cache
def languages() -> dict[str, str]:
    """Every language espeak-ng speaks, by lowercase tag: {'es': 'es', 'es-419': 'es-419', ...}."""
    return {
        path.name.lower(): path.name for path in (_data() / "lang").rglob("*") if path.is_file()
    }


@cache
def variants() -> frozenset[str]:
    """Voice variants (`f3`, `m2`, `klatt`, ...), spoken as `<language>+<variant>`."""
    return frozenset(
        path.name for path in (_data() / "voices" / "!v").iterdir() if path.name.isidentifier()
    )
