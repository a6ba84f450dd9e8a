"""Window embeddings (and band levels) for whole datasets, computed with the deployed numerics and cached on disk.

Besides the 1024-d embedding, the front end outputs each window's ``band_levels`` (:mod:`fanwatch.spectral`),
which the anomaly score uses beside it; both are cached together.

Embeddings come from a TFLite file of the YAMNet front end, exported by the same code and with the
same quantization as the end-to-end model the Pi runs, so a statistic fitted on them means on the Pi
what it meant in training. The front-end file itself is cached per YAMNet weights and quantization.

Cache entries are keyed by the audio file's content hash, the channel setting, window and hop, the
YAMNet weights hash and the quantization; an entry that fails to load or has the wrong shape is
recomputed, never trusted. Two worker processes (one interpreter each, started with "spawn" so that
no TensorFlow state is inherited) use both cores: measured here, two threads gained only ~20 % over
one, two processes ~65 %.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import audio, config, spectral
from .datasets import Recording
from .errors import BadAudioError, FanwatchError
from .export import DEFAULT_QUANTIZATION
from .runtime import TFLiteModel

CACHE_VERSION = 6  # 2: DFT by matrix product in the front end; 3: band levels beside the embeddings;
# 4: the bands' fluctuation beside their levels; 5: the front end's FFT in one radix step; 6: the modulation spectrum


def frontend_path(cache_dir: Path, yamnet_sha256: str, quantization: str) -> Path:
    return Path(cache_dir) / "frontend" / f"yamnet-{yamnet_sha256[:16]}-{quantization}-v{CACHE_VERSION}.tflite"


def ensure_frontend(yamnet_path=None, quantization: str = DEFAULT_QUANTIZATION, cache_dir=None) -> tuple[Path, str]:
    """The embedding-only TFLite file for these weights and quantization; built once, then reused."""
    from . import yamnet
    from .export import export_tflite

    weights_path = yamnet.check_yamnet_file(yamnet_path)
    sha = config.sha256_file(weights_path)
    path = frontend_path(config.resolve_cache_dir(cache_dir), sha, quantization)
    if not path.is_file():
        weights = yamnet.load_weights(weights_path)
        model = yamnet.build_model(weights, with_scores=False, name="frontend", with_bands=True)
        export_tflite(model, path, quantization)
    return path, sha


@dataclass
class EmbeddingSet:
    """Window embeddings of many recordings, with the bookkeeping to go back to files."""

    embeddings: np.ndarray  # [n_windows, 1024] float32
    file_index: np.ndarray  # [n_windows] index into ``recordings``
    recordings: list[Recording]  # the files that gave at least one window
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    bands: np.ndarray | None = None  # [n_windows, spectral.BAND_FEATURES] float32 band levels

    def labels(self) -> np.ndarray:
        return np.asarray([self.recordings[i].label for i in self.file_index])

    def machines(self) -> np.ndarray:
        return np.asarray([self.recordings[i].machine for i in self.file_index])

    def normal(self) -> np.ndarray:
        return np.asarray([self.recordings[i].normal for i in self.file_index], dtype=bool)

    def subset(self, keep: np.ndarray) -> EmbeddingSet:
        """Windows of the recordings whose mask entry is True (mask over recordings)."""
        keep = np.asarray(keep, dtype=bool)
        new_index = np.cumsum(keep) - 1
        windows = keep[self.file_index]
        return EmbeddingSet(
            embeddings=self.embeddings[windows],
            file_index=new_index[self.file_index[windows]],
            recordings=[r for r, k in zip(self.recordings, keep) if k],
            skipped=list(self.skipped),
            bands=None if self.bands is None else self.bands[windows],
        )

    def files(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per recording, its (embeddings, band levels) windows in order."""
        return [
            (self.embeddings[self.file_index == i], self.bands[self.file_index == i])
            for i in range(len(self.recordings))
        ]


class Extractor:
    """Embeds audio files with a front-end TFLite file, caching one .npz per file."""

    def __init__(
        self, frontend: str | os.PathLike, frontend_id: str, cache_dir=None, channel="mean", workers: int | None = None
    ):
        self.frontend = Path(frontend)
        self.frontend_id = frontend_id
        self.cache_dir = config.resolve_cache_dir(cache_dir) / "embeddings"
        self.channel = channel
        self.workers = workers or min(2, os.cpu_count() or 1)
        self._interpreter: TFLiteModel | None = None

    def __getstate__(self):  # sent to worker processes without the interpreter
        state = dict(self.__dict__)
        state["_interpreter"] = None
        return state

    def _model(self) -> TFLiteModel:
        if self._interpreter is None:
            self._interpreter = TFLiteModel(self.frontend, num_threads=1)
        return self._interpreter

    def embed_signal(self, signal: np.ndarray) -> np.ndarray:
        """[n_windows, 1024] for a 16 kHz mono signal at least one window long."""
        return self.features_signal(signal)[0]

    def features_signal(self, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([n_windows, 1024] embeddings, [n_windows, BAND_FEATURES] band levels) of a 16 kHz mono signal."""
        windows = audio.frame_windows(signal)
        model = self._model()
        out = np.empty((len(windows), config.EMBEDDING_DIM), np.float32)
        bands = np.empty((len(windows), spectral.BAND_FEATURES), np.float32)
        for i, window in enumerate(windows):
            result = model(window)
            out[i] = result["embedding"]
            bands[i] = result[spectral.OUTPUT_NAME]
        return out, bands

    def _key(self, path: Path) -> str:
        settings = json.dumps(
            [
                config.sha256_file(path),
                str(self.channel),
                config.WINDOW_SAMPLES,
                config.HOP_SAMPLES,
                self.frontend_id,
                CACHE_VERSION,
            ]
        )
        return hashlib.sha256(settings.encode()).hexdigest()

    def _load_cached(self, entry: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(entry, allow_pickle=False) as data:
                emb = np.asarray(data["embeddings"], dtype=np.float32)
                bands = np.asarray(data["band_levels"], dtype=np.float32)
        except (OSError, ValueError, KeyError, EOFError):
            return None
        if emb.ndim != 2 or emb.shape[1] != config.EMBEDDING_DIM or len(emb) == 0 or not np.isfinite(emb).all():
            return None
        if bands.shape != (len(emb), spectral.BAND_FEATURES) or not np.isfinite(bands).all():
            return None
        return emb, bands

    def _entry(self, path: Path) -> Path:
        audio.check_file(path)  # before hashing: a named pipe or /dev/zero would never end
        try:
            key = self._key(path)
        except OSError as exc:
            raise BadAudioError(path, f"cannot read ({exc.strerror or exc})") from None
        return self.cache_dir / key[:2] / f"{key}.npz"

    def cached(self, path: str | os.PathLike) -> np.ndarray | None:
        """The cached embeddings of a file, or None (also for a file that cannot be read)."""
        found = self.cached_features(path)
        return None if found is None else found[0]

    def cached_features(self, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached (embeddings, band levels) of a file, or None."""
        try:
            entry = self._entry(Path(path))
        except BadAudioError:
            return None
        return self._load_cached(entry) if entry.exists() else None

    def embed_file(self, path: str | os.PathLike) -> np.ndarray:
        """Cached embeddings of one file; raises BadAudioError for a file that cannot be used."""
        return self.file_features(path)[0]

    def file_features(self, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
        """Cached (embeddings, band levels) of one file; raises BadAudioError for a file that cannot be used."""
        path = Path(path)
        entry = self._entry(path)
        found = self._load_cached(entry) if entry.exists() else None
        if found is None:
            found = self.features_signal(audio.load_audio(path, channel=self.channel))
            if not (np.isfinite(found[0]).all() and np.isfinite(found[1]).all()):
                raise BadAudioError(path, "the front end gives NaN or infinite embeddings for it")
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".npz")
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, embeddings=found[0], band_levels=found[1])
            os.replace(tmp, entry)
        return found

    def _embed_or_reason(self, path: str) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
        try:
            return self.file_features(path), None
        except BadAudioError as exc:
            return None, exc.reason

    def embed_recordings(
        self, recordings: list[Recording], progress: bool = True, desc: str = "embeddings"
    ) -> EmbeddingSet:
        """All windows of all usable recordings; bad files are reported in one line each and skipped."""
        from tqdm import tqdm

        results: list[tuple[np.ndarray, np.ndarray] | None] = [self.cached_features(r.path) for r in recordings]
        skipped: list[tuple[str, str]] = []
        todo = [i for i, emb in enumerate(results) if emb is None]
        paths = [str(recordings[i].path) for i in todo]
        pool = None
        if self.workers > 1 and len(todo) >= 8:  # starting workers costs about a second
            pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self,),
            )
            outcomes = pool.map(_worker_embed, paths, chunksize=1)
        else:
            outcomes = map(self._embed_or_reason, paths)
        try:
            with tqdm(total=len(todo), desc=desc, unit="file", disable=not progress or not todo, leave=False) as bar:
                for i, (emb, reason) in zip(todo, outcomes):
                    if reason is not None:
                        skipped.append((str(recordings[i].path), reason))
                        tqdm.write(f"skipped {recordings[i].path}: {reason}")
                    results[i] = emb
                    bar.update(1)
        except BrokenProcessPool:
            raise FanwatchError(
                "an embedding worker process died (out of memory?); what was done is cached: "
                "run again, or with --workers 1"
            ) from None
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        kept = [i for i, e in enumerate(results) if e is not None]
        if not kept:
            return EmbeddingSet(
                np.zeros((0, config.EMBEDDING_DIM), np.float32),
                np.zeros(0, int),
                [],
                skipped,
                np.zeros((0, spectral.BAND_FEATURES), np.float32),
            )
        return EmbeddingSet(
            embeddings=np.concatenate([results[i][0] for i in kept]),
            file_index=np.concatenate([np.full(len(results[i][0]), n) for n, i in enumerate(kept)]),
            recordings=[recordings[i] for i in kept],
            skipped=skipped,
            bands=np.concatenate([results[i][1] for i in kept]),
        )


_WORKER: Extractor | None = None


def _init_worker(extractor: Extractor) -> None:
    global _WORKER
    _WORKER = extractor


def _worker_embed(path: str):
    return _WORKER._embed_or_reason(path)


def make_extractor(
    yamnet_path=None,
    quantization: str = DEFAULT_QUANTIZATION,
    cache_dir=None,
    channel="mean",
    workers: int | None = None,
) -> tuple[Extractor, str]:
    """An Extractor on the cached front end for these weights; also returns the weights' sha256."""
    frontend, sha = ensure_frontend(yamnet_path, quantization, cache_dir)
    return Extractor(frontend, f"{sha}:{quantization}", cache_dir, channel, workers), sha


def require_windows(emb: EmbeddingSet, what: str) -> None:
    if len(emb.embeddings) == 0:
        raise FanwatchError(f"no usable recordings for {what} ({len(emb.skipped)} skipped)")
