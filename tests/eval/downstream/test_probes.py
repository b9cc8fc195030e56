"""Probe protocols against independent references: scikit-learn's logistic regression for the linear probe,
a float64 loop for the k-NN vote, numpy for the spread over seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from eval.downstream.probes import (
    KNN_KS,
    accuracy,
    few_shot_indices,
    fit_knn,
    fit_linear,
    fit_logistic,
    flatten_frames,
    knn_predict,
    mean_std,
    standardization,
)

NUM_CLASSES = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Full-batch steps on a few hundred rows gain nothing from threads and lose much on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gaussians(seed: int, per_class: int, sep: float = 0.5, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Six overlapping Gaussian classes (fixed centres; ``seed`` draws the samples), in float64, with
    per-feature scales and offsets far from standardised so that standardisation matters."""
    centres = torch.randn(NUM_CLASSES, dim, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    scale = torch.rand(dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 3 + 0.5
    offset = torch.randn(dim, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 5
    y = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    noise = torch.randn(len(y), dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (centres[y] * sep + noise) * scale + offset, y


@pytest.fixture(scope="module")
def splits():
    return {"train": gaussians(0, 100), "val": gaussians(1, 100), "test": gaussians(2, 500)}


def sklearn_logistic(x: torch.Tensor, y: torch.Tensor, wd: float):
    """Our objective is mean_i CE_i + (wd/2) ||W||^2; scikit-learn minimises C sum_i CE_i + (1/2) ||W||^2
    (intercept unpenalised with lbfgs). Dividing the latter by C n gives mean_i CE_i + ||W||^2 / (2 C n),
    the same minimiser when C = 1 / (n wd)."""
    mean, std = standardization(x)
    model = LogisticRegression(C=1.0 / (len(x) * wd), max_iter=10_000, tol=1e-10)
    return model.fit(((x - mean) / std).numpy(), y.numpy()), mean, std


@pytest.mark.parametrize("wd", [1e-2, 1e-1])
def test_fit_logistic_matches_sklearn(splits, wd):
    (x, y), (x_test, y_test) = splits["train"], splits["test"]
    model, mean, std = sklearn_logistic(x, y, wd)
    probe = fit_logistic(x, y, NUM_CLASSES, wd, lr=3e-2, steps=500)
    sk_acc = 100.0 * float(np.mean(model.predict(((x_test - mean) / std).numpy()) == y_test.numpy()))
    assert 60 < sk_acc < 95  # overlapping classes: a problem where the fit matters
    assert abs(accuracy(probe.predict(x_test), y_test) - sk_acc) <= 1.0
    w_ref = torch.from_numpy(model.coef_)
    assert torch.linalg.norm(probe.weight - w_ref) / torch.linalg.norm(w_ref) < 0.02
    # biases agree up to a common shift (softmax ignores it)
    b, b_ref = probe.bias, torch.from_numpy(model.intercept_)
    torch.testing.assert_close(b - b.mean(), b_ref - b_ref.mean(), atol=1e-3, rtol=0)


def test_fit_linear_selects_on_validation_and_matches_sklearn(splits):
    (x, y), (x_val, y_val), (x_test, y_test) = splits["train"], splits["val"], splits["test"]
    result = fit_linear(x, y, x_val, y_val, NUM_CLASSES)
    assert set(result.grid) == {(lr, wd) for lr in (1e-3, 1e-2) for wd in (1e-4, 1e-3, 1e-2, 1e-1)}
    assert result.val_accuracy == max(result.grid.values()) == result.grid[(result.lr, result.wd)]
    assert result.val_accuracy == accuracy(result.predict(x_val), y_val)  # the kept state is the best one
    model, mean, std = sklearn_logistic(x, y, result.wd)
    sk_acc = 100.0 * float(np.mean(model.predict(((x_test - mean) / std).numpy()) == y_test.numpy()))
    assert abs(accuracy(result.predict(x_test), y_test) - sk_acc) <= 1.0


def test_fit_linear_tie_goes_to_the_strongest_weight_decay():
    x, y = gaussians(3, 10, sep=20.0, dim=8)  # far apart: every grid point reaches 100% on validation
    x_val, y_val = gaussians(4, 10, sep=20.0, dim=8)
    result = fit_linear(x, y, x_val, y_val, NUM_CLASSES, lrs=(1e-2,), wds=(1e-3, 1e-1, 1e-2), max_epochs=200)
    assert set(result.grid.values()) == {100.0}
    assert result.wd == 1e-1


def test_fit_is_deterministic_for_a_seed(splits):
    (x, y), (x_val, y_val) = splits["train"], splits["val"]
    a, b, c = (
        fit_logistic(x, y, NUM_CLASSES, 1e-2, lr=1e-2, steps=30, val_x=x_val, val_y=y_val, seed=s) for s in (0, 0, 1)
    )
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and a.steps == b.steps
    assert not torch.equal(a.weight, c.weight)


def test_standardisation_uses_training_statistics_only(splits):
    (x, y), (x_val, y_val) = splits["train"], splits["val"]
    result = fit_linear(x, y, x_val, y_val, NUM_CLASSES, lrs=(1e-2,), wds=(1e-2,), max_epochs=100)
    torch.testing.assert_close(result.probe.mean, x.mean(0), rtol=0, atol=0)
    torch.testing.assert_close(result.probe.std, x.std(0, unbiased=False), rtol=0, atol=0)
    # a row is scored alone as in a batch: no statistics are taken from the rows being scored
    torch.testing.assert_close(result.logits(x_val[:1]), result.logits(x_val)[:1])
    # the same validation split shifted by 3 training deviations: standardising it with its own statistics
    # would undo the shift and select as well as before; with the training statistics it cannot
    shifted = x_val + 3 * x.std(0)
    leaked = fit_linear(x, y, shifted, y_val, NUM_CLASSES, lrs=(1e-2,), wds=(1e-2,), max_epochs=100)
    assert result.val_accuracy > 70 and leaked.val_accuracy < 50
    assert accuracy(result.predict(shifted), y_val) < 50


def test_constant_feature_stays_finite():
    x, y = gaussians(5, 20, dim=4)
    x = torch.cat([x, torch.full((len(x), 1), 7.0, dtype=x.dtype)], dim=1)
    probe = fit_logistic(x, y, NUM_CLASSES, 1e-2, lr=1e-2, steps=20)
    assert probe.std[-1] == 1.0
    other = x.clone()
    other[:, -1] = -3.0
    assert torch.isfinite(probe.logits(other)).all()


# k-NN


def reference_knn(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, k: int) -> np.ndarray:
    """Cosine similarity row by row, the k nearest by argsort, similarities summed per class in a dict, the
    largest sum wins and among equal sums the class met first in nearest-first order."""
    train_n = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    preds = []
    for q in query_x / np.linalg.norm(query_x, axis=1, keepdims=True):
        sims = np.array([float(np.dot(t, q)) for t in train_n])
        order = np.argsort(-sims, kind="stable")[:k]
        votes: dict[int, float] = {}
        for j in order:
            votes[int(train_y[j])] = votes.get(int(train_y[j]), 0.0) + sims[j]
        best = max(votes.values())
        preds.append(next(int(train_y[j]) for j in order if votes[int(train_y[j])] == best))
    return np.array(preds)


@pytest.fixture(scope="module")
def knn_data():
    g = torch.Generator().manual_seed(11)
    train_x = torch.randn(300, 12, generator=g, dtype=torch.float64) + 0.3
    train_y = torch.randint(0, 5, (300,), generator=g)
    query_x = torch.randn(150, 12, generator=g, dtype=torch.float64) + 0.3
    query_y = torch.randint(0, 5, (150,), generator=g)
    return train_x, train_y, query_x, query_y


@pytest.mark.parametrize("chunk_size", [1024, 7])
@pytest.mark.parametrize("k", [1, 5, 20, 1000])
def test_knn_equals_brute_force(knn_data, k, chunk_size):
    train_x, train_y, query_x, _ = knn_data
    pred = knn_predict(train_x, train_y, query_x, k, 5, chunk_size=chunk_size)
    want = reference_knn(train_x.numpy(), train_y.numpy(), query_x.numpy(), min(k, len(train_x)))
    np.testing.assert_array_equal(pred.numpy(), want)
    if k > 1:  # the weighted vote is not the nearest neighbour
        assert not torch.equal(pred, knn_predict(train_x, train_y, query_x, 1, 5))


def test_knn_weighted_vote_and_ties():
    """Query e1 in 16 dimensions against points whose cosine similarities are exact binary fractions:
    A (class 0) at 7/8, B (class 2) at 3/4 and 1/4, C (class 1) at 1/2 twice."""

    def point(first: float, ones: slice) -> torch.Tensor:
        v = torch.zeros(16, dtype=torch.float64)
        v[ones] = 1.0
        v[0] = first
        return v

    train_x = torch.stack([
        point(7.0, slice(1, 16)),  # A: norm 8
        point(3.0, slice(1, 8)),  # B: norm 4
        point(2.0, slice(1, 13)),  # C: norm 4
        point(2.0, slice(4, 16)),  # C
        point(1.0, slice(1, 16)),  # B: norm 4
    ])  # fmt: skip
    train_y = torch.tensor([0, 2, 1, 1, 2])
    query = torch.eye(16, dtype=torch.float64)[:1]
    got = [int(knn_predict(train_x, train_y, query, k, 3)) for k in range(1, 6)]
    # k=1..3: A's 7/8 leads; k=4: C's 1/2 + 1/2 beats it; k=5: B's 3/4 + 1/4 ties with C and B is nearer
    # (though its class index is larger)
    assert got == [0, 0, 0, 1, 2]
    assert got == [int(reference_knn(train_x.numpy(), train_y.numpy(), query.numpy(), k)[0]) for k in range(1, 6)]


def test_fit_knn_picks_k_on_validation(knn_data):
    train_x, train_y, val_x, val_y = knn_data
    result = fit_knn(train_x, train_y, val_x, val_y, 5, chunk_size=16)
    want = {
        k: 100.0 * float(np.mean(reference_knn(train_x.numpy(), train_y.numpy(), val_x.numpy(), k) == val_y.numpy()))
        for k in KNN_KS
    }
    assert result.grid == pytest.approx(want, abs=1e-9)
    assert result.val_accuracy == max(want.values())
    assert result.k == min(k for k in KNN_KS if want[k] == result.val_accuracy)
    assert torch.equal(result.predict(val_x), knn_predict(train_x, train_y, val_x, result.k, 5))


# few-shot


def test_few_shot_indices():
    labels = torch.tensor([c for c in range(5) for _ in range(10 + 3 * c)])[
        torch.randperm(80, generator=torch.Generator().manual_seed(0))
    ]
    idx = few_shot_indices(labels, 4, seed=0)
    assert len(idx) == len(set(idx.tolist())) == 20
    assert torch.bincount(labels[idx], minlength=5).tolist() == [4] * 5
    assert torch.equal(idx, few_shot_indices(labels, 4, seed=0))
    assert not torch.equal(idx, few_shot_indices(labels, 4, seed=1))


def test_few_shot_short_class_raises():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 6)
    with pytest.raises(ValueError, match=r"class 1 has 3 training examples"):
        few_shot_indices(labels, 4, seed=0)
    with pytest.raises(ValueError, match=r"class 3 has 0 training examples"):
        few_shot_indices(labels, 3, seed=0, num_classes=4)


# metrics


def test_accuracy_and_mean_std():
    assert accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == 75.0
    values = [71.5, 68.25, 70.0, 73.125]
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    assert mean_std([42.0]) == (42.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_flatten_frames_drops_ignored_frames():
    features = [torch.arange(6.0).reshape(3, 2), torch.arange(10.0, 14.0).reshape(2, 2)]
    labels = [torch.tensor([1, -1, 0]), torch.tensor([-1, 2])]
    x, y = flatten_frames(features, labels)
    assert torch.equal(x, torch.tensor([[0.0, 1.0], [4.0, 5.0], [12.0, 13.0]]))
    assert torch.equal(y, torch.tensor([1, 0, 2]))
    with pytest.raises(ValueError, match="sequence 1"):
        flatten_frames(features, [labels[0], torch.tensor([2])])


def test_the_batched_grid_fits_each_point_as_fitting_it_alone(splits):
    """fit_linear trains every (lr, wd) in one batched pass; each point must end where fit_logistic alone
    ends: the same best validation accuracy, at the same step, with the same weights."""
    (x, y), (xv, yv) = splits["train"], splits["val"]
    result = fit_linear(x, y, xv, yv, 6, lrs=(1e-3, 1e-2), wds=(1e-3, 1e-1), max_epochs=200, seed=3)
    for (lr, wd), val_acc in result.grid.items():
        alone = fit_logistic(x, y, 6, wd, lr=lr, steps=200, val_x=xv, val_y=yv, seed=3)
        assert alone.val_accuracy == val_acc, (lr, wd)
        if (lr, wd) == (result.lr, result.wd):
            assert alone.steps == result.probe.steps
            torch.testing.assert_close(alone.weight, result.weight, rtol=1e-4, atol=1e-5)
