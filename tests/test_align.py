import cv2
import numpy as np

from facefleet.vision.align import ARCFACE_TEMPLATE, align_faces, similarity_transforms


def test_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    angles, scales = rng.uniform(-0.5, 0.5, 4), rng.uniform(0.3, 3, 4)
    src = []
    for a, s in zip(angles, scales, strict=True):
        r = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        src.append((ARCFACE_TEMPLATE - 50) @ r.T + rng.uniform(0, 500, 2))
    m = similarity_transforms(np.stack(src))
    mapped = np.einsum("nij,nkj->nki", m[:, :, :2], np.stack(src)) + m[:, None, :, 2]
    np.testing.assert_allclose(mapped, np.broadcast_to(ARCFACE_TEMPLATE, mapped.shape), atol=1e-3)


def test_batch_equals_single(assets, load_detector):
    img = cv2.imread(str(assets / "faces" / "selfie-many-people.jpg"))
    dets = load_detector().detect(img)
    batch = align_faces(img, dets.kps)
    assert batch.shape == (len(dets), 112, 112, 3) and batch.dtype == np.uint8
    for i in range(len(dets)):
        np.testing.assert_array_equal(batch[i], align_faces(img, dets.kps[i:i + 1])[0])
    buf = np.zeros((16, 112, 112, 3), np.uint8)
    out = align_faces(img, dets.kps, out=buf)
    assert np.shares_memory(out, buf)
    np.testing.assert_array_equal(out, batch)
