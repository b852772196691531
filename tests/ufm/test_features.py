"""ufm.features: the deep ReLU feature model (Sukenik, Mondelli & Lampert 2023), added through the seam."""

import numpy as np
import pytest
import torch

from ufm import theory
from ufm.features import DeepReLU
from ufm.fit import FitOptions, fit
from ufm.losses import MSE
from ufm.model import Features
from ufm.targets import one_hot


def test_deep_relu_features_are_the_relu_chain_and_its_ridge():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(3, 4, generator=g, dtype=torch.float64)
    model = DeepReLU(2)
    module = Features(model, H.clone(), model.layers(3, 0.5, g, torch.float64))
    A, B = (layer.detach() for layer in module.layers)
    want = torch.relu(B @ torch.relu(A @ H))
    torch.testing.assert_close(module.features(), want, rtol=1e-15, atol=0)
    outs = module.layer_features()
    assert len(outs) == 3 and torch.equal(outs[-1], module.features())
    with torch.no_grad():
        terms = module.penalty_terms(0.1, 0.2, None, 1.0)
    want_ridge = 0.05 * (A.square().sum() + B.square().sum()) + 0.1 * H.square().sum()
    assert float(sum(terms)) == pytest.approx(float(want_ridge), rel=1e-12)
    with pytest.raises(ValueError, match="needs depth >= 1"):
        DeepReLU(0)


@pytest.mark.parametrize("depth, steps", [(1, 4000), pytest.param(2, 12000, marks=pytest.mark.slow),
                                          pytest.param(3, 15000, marks=pytest.mark.slow)])  # depths 2-3: ~20-30 s each
def test_deep_relu_binary_mse_reaches_deep_neural_collapse(depth, steps):
    """Binary MSE with weight decay: the best of two seeded GD runs reaches the deep linear frame's
    objective (and not below it: it is the global optimum), and after every ReLU the class means are
    collapsed, orthogonal and of the frame's norms."""
    n, lam, d = 5, 1e-3, 8
    targets = one_hot([n, n])
    frame = theory.imbalanced_mse_frame([n, n], lam, depth=depth)
    c = frame.s2 * lam  # each factor's lambda * singular value^2, per class
    optimum = float(np.sum(n / (2 * 2 * n) * (frame.logits - 1) ** 2 + (depth + 2) / 2 * c))
    runs = [fit(targets, FitOptions(dim=d, weight_decay=lam, steps=steps, lr=None, optimizer="gd", seed=seed,
                                    init_scale=0.3), loss=MSE(), features=DeepReLU(depth), device="cpu", snapshots=[])
            for seed in (1, 3)]
    best = min(runs, key=lambda r: r.history[-1]["objective"])
    objective = best.history[-1]["objective"]
    assert optimum * (1 - 1e-9) <= objective <= optimum * (1 + 2e-4)
    labels = np.repeat([0, 1], n)
    for layer, X in enumerate(best.layer_features()[1:], start=1):  # the post-ReLU layers
        X = X.numpy()
        means = np.stack([X[:, labels == k].mean(1) for k in (0, 1)])  # (2, d)
        within = sum(np.sum((X[:, labels == k] - means[k][:, None]) ** 2) for k in (0, 1)) / np.sum(means ** 2)
        cos = means[0] @ means[1] / np.prod(np.linalg.norm(means, axis=1))
        assert within < 1e-6 and abs(cos) < 0.05, (layer, within, cos)
        np.testing.assert_allclose(np.sum(means ** 2, axis=1), frame.layer_means[layer], rtol=2e-2)
