"""ufm.model: the composed UFMModel (its ridge over a minibatch)."""

import pytest
import torch


def test_penalty_of_a_minibatch_scales_the_per_context_terms():
    """(lambda_W/2)||W||^2 + (m/B)[(lambda_H/2)||H_b||^2 + (beta/2)||H_b - H0_b||^2], written out."""
    from ufm.classifiers import LearnedClassifier, Words
    from ufm.features import Perturbed
    from ufm.model import Features, UFMModel

    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(3, 6, generator=g, dtype=torch.float64)
    W0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    model = UFMModel(Words(LearnedClassifier(), W0), Features(Perturbed(0.7, h0), h0.clone(), []))
    with torch.no_grad():
        model.H.add_(torch.randn(3, 6, generator=g, dtype=torch.float64))  # move H off its anchor
    batch = torch.tensor([1, 4])
    W, H = model.W.detach().numpy(), model.H.detach().numpy()
    want = 0.5 * 0.1 * (W ** 2).sum() + 3.0 * (0.5 * 0.2 * (H[:, [1, 4]] ** 2).sum()
                                               + 0.5 * 0.7 * ((H - h0.numpy())[:, [1, 4]] ** 2).sum())
    with torch.no_grad():
        got = float(model.penalty(0.1, 0.2, batch, scale=3.0))
    assert got == pytest.approx(want, rel=1e-12)
