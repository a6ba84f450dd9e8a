"""Embedding extraction: the deployed front end, cached by content, corrupt entries recomputed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REALDATA, needs_realdata

from fanwatch import audio, config, datasets, embeddings, runtime


@pytest.fixture(scope="module")
def extractor(yamnet_path, cache_dir):
    ex, sha = embeddings.make_extractor(yamnet_path, cache_dir=cache_dir, workers=1)
    return ex


def test_frontend_is_built_once_and_named_by_weights(yamnet_path, cache_dir):
    first, sha = embeddings.ensure_frontend(yamnet_path, cache_dir=cache_dir)
    mtime = first.stat().st_mtime_ns
    again, _ = embeddings.ensure_frontend(yamnet_path, cache_dir=cache_dir)
    assert again == first and again.stat().st_mtime_ns == mtime
    assert sha[:16] in first.name and "int8-pointwise" in first.name


@needs_realdata
def test_embeddings_equal_the_deployed_model_numerics(extractor, trained_model):
    path = REALDATA / "dcase2020_id00/train/normal_id_00_00000007.wav"
    emb = extractor.embed_file(path)
    windows = audio.frame_windows(audio.load_audio(path))
    assert emb.shape == (len(windows), config.EMBEDDING_DIM) == (19, 1024)
    deployed = runtime.TFLiteModel(trained_model / runtime.MODEL_NAME)
    for i in (0, 9, 18):
        np.testing.assert_allclose(deployed(windows[i])["embedding"], emb[i], rtol=1e-5, atol=1e-5)


@needs_realdata
def test_cache_hit_and_corrupt_entry_recomputed(extractor, tmp_path):
    src = REALDATA / "dcase2020_id00/train/normal_id_00_00000011.wav"
    first = extractor.embed_file(src)
    entry = extractor._entry(src)
    assert entry.is_file()
    stamp = entry.stat().st_mtime_ns
    np.testing.assert_array_equal(extractor.embed_file(src), first)
    assert entry.stat().st_mtime_ns == stamp  # served from the cache
    entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(extractor.embed_file(src), first)  # recomputed, same numbers
    np.savez(entry, embeddings=np.full((3, 7), np.nan, np.float32))  # wrong shape and NaN
    np.testing.assert_array_equal(extractor.embed_file(src), first)


@needs_realdata
def test_cache_key_follows_content_not_name(extractor, tmp_path):
    a = tmp_path / "a.wav"
    a.write_bytes((REALDATA / "dcase2020_id00/train/normal_id_00_00000012.wav").read_bytes())
    b = tmp_path / "b.wav"
    b.write_bytes(a.read_bytes())
    assert extractor._entry(a) == extractor._entry(b)


@needs_realdata
def test_bad_files_are_reported_and_the_rest_embedded(yamnet_path, cache_dir, tmp_path):
    ex, _ = embeddings.make_extractor(yamnet_path, cache_dir=cache_dir, workers=2)
    good = sorted((REALDATA / "dcase2020_id00/train").glob("*.wav"))[:8]
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    recs = [datasets.Recording(p, "x", "default", True) for p in good + [bad]]
    es = ex.embed_recordings(recs, progress=False)
    assert len(es.recordings) == 8 and len(es.embeddings) == 8 * 19
    assert [s[0] for s in es.skipped] == [str(bad)]
    assert np.array_equal(np.unique(es.file_index), np.arange(8))
