import numpy as np
import pytest

from conftest import RECOGNIZERS


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a same-person pair outscores a different-person pair."""
    allv = np.concatenate([pos, neg])
    ranks = allv.argsort().argsort() + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@pytest.mark.parametrize("name", RECOGNIZERS)
def test_people_auc_and_rank1(people, load_recognizer, name):
    labels, crops = people
    assert len(set(labels)) == 13 and len(labels) == 61
    rec = load_recognizer(name)
    emb, pre_norm = rec.embed(crops)
    assert emb.shape == (61, rec.rec.embedding_size)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert (pre_norm > 1).all()
    sims = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    assert _auc(sims[same & off], sims[~same]) == 1.0
    np.fill_diagonal(sims, -2)
    assert (labels[sims.argmax(axis=1)] == labels).mean() == 1.0  # leave-one-out rank-1


@pytest.mark.parametrize("name", RECOGNIZERS)
def test_batch_equals_single_runs(people, load_recognizer, name):
    _, crops = people
    rec = load_recognizer(name)
    batch, _ = rec.embed(crops[:5])
    calls = rec.model.calls
    singles = np.concatenate([rec.embed(crops[i:i + 1])[0] for i in range(5)])
    np.testing.assert_allclose(batch, singles, atol=2e-4)
    assert rec.model.calls == calls + 5


@pytest.mark.parametrize("name", ["w600k_mbf_fp32", "mobilefacenet_128"])
def test_in_graph_preprocessing_matches_the_spec(people, load_recognizer, model_path, name):
    """The ONNX backend folds colour swap + normalization into the graph; check it against the
    model run by hand on RGB, normalized per its ModelSpec. Feeding RGB instead must differ."""
    import onnxruntime as ort

    _, crops = people
    rec = load_recognizer(name)
    norm = rec.spec.normalization
    rgb = crops[:4, :, :, ::-1].astype(np.float32)
    x = ((rgb - np.array(norm.mean, np.float32)) / np.array(norm.std, np.float32)).transpose(0, 3, 1, 2)
    sess = ort.InferenceSession(str(model_path(name)), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {rec.spec.input.name: x[i:i + 1]})[0] for i in range(4)])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ours, _ = rec.embed(crops[:4])
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    swapped, _ = rec.embed(np.ascontiguousarray(crops[:4, :, :, ::-1]))
    assert (np.sum(ours * swapped, axis=1) < 0.98).all()
