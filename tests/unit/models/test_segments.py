from __future__ import annotations

import numpy as np

from models.segments import Segmenter, elbow, fit_segments, knee


def _blobs(seed: int) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]])
    x = np.vstack([c + 0.03 * rng.normal(size=(25, 2)) for c in centres])
    cats = [(r, "manufacturing", "limited_company") for r in "ABCD" for _ in range(25)]
    return x, cats


def test_assign_is_the_nearest_prototype_under_kprototypes_distance() -> None:
    x, cats = _blobs(0)
    seg, labels, _ = fit_segments(x, cats, ("u", "v"), 4, np.repeat([0.0, 0.1, 0.2, 0.9], 25),
                                  np.repeat([0.0, 0.5, 0.1, 0.0], 25), seed=0, n_init=1)
    protos = np.asarray(seg.prototypes_numeric)
    pcat = seg.prototypes_categorical
    for i in range(0, 100, 7):
        d = [((x[i] - protos[k]) ** 2).sum() + seg.gamma * sum(a != b for a, b in zip(cats[i], pcat[k], strict=True))
             for k in range(4)]
        assert labels[i] == int(np.argmin(d))
    assert sorted(seg.names) == ["high-end", "low-end", "mid-end", "potential"]


def test_labels_are_stable_across_refits() -> None:
    x, cats = _blobs(1)
    dp, growth = np.repeat([0.0, 0.1, 0.2, 0.9], 25), np.repeat([0.0, 0.5, 0.1, 0.0], 25)
    first, labels1, _ = fit_segments(x, cats, ("u", "v"), 4, dp, growth, seed=0, n_init=1)
    # a refit on a perturbed sample with another seed, aligned to the first
    x2 = x + 0.01 * np.random.default_rng(9).normal(size=x.shape)
    second, labels2, _ = fit_segments(x2, cats, ("u", "v"), 4, dp, growth, seed=5, n_init=1, previous=first)
    assert second.names == first.names
    assert [first.names[i] for i in labels1] == [second.names[i] for i in labels2]
    # reordering prototypes then aligning restores the original order
    shuffled = Segmenter(first.numeric_columns, first.prototypes_numeric[::-1], first.prototypes_categorical[::-1],
                         first.gamma, ("w", "x", "y", "z"))
    assert shuffled.aligned_to(first).prototypes_numeric == first.prototypes_numeric


def test_knee_and_elbow() -> None:
    x, cats = _blobs(2)
    costs = elbow(x, cats, seed=0, ks=(2, 3, 4, 5, 6, 7), n_init=1)
    assert costs[2] > costs[4] > 0
    assert knee(costs) in (3, 4)
    assert knee({2: 1.0, 3: 1.0, 4: 1.0}) == 2
