"""Seeded UFM runs pinned before the family moved behind one seam (losses, feature models and
classifiers as objects, one ``fit``): ``test_fit.py`` checks that today's code reproduces them to
1e-10. Regenerate (``python -m tests.ufm.pin_runs``) only for a change of results that is intended
and said in the commit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PINNED = Path(__file__).with_name("pinned_runs.json")


def cases():
    from ufm.targets import one_hot, random_supports

    soft = random_supports(8, 6, (1, 3), seed=3)
    hard = one_hot([3, 3, 2])
    rng = np.random.default_rng(0)
    h0_soft = rng.standard_normal((4, soft.num_contexts))
    h0_hard = rng.standard_normal((4, hard.num_contexts))
    return {
        "ce_free_adam": (soft, dict(weight_decay=1e-3, steps=40)),
        "ce_label_smoothing_gd": (hard, dict(weight_decay=5e-3, steps=30, optimizer="gd", label_smoothing=0.1)),
        "mse_deep_linear_gd": (hard, dict(weight_decay=1e-3, steps=30, optimizer="gd", loss="mse",
                                          features="deep_linear", depth=2)),
        "mse_perturbed_gd": (hard, dict(weight_decay=1e-3, steps=30, optimizer="gd", loss="mse",
                                        features="perturbed", beta=0.5, h0=h0_hard)),
        "ce_sphere_adam": (soft, dict(weight_decay=0.0, steps=40, features="normalized", radius=2.0)),
        "ce_sphere_words_ngd": (soft, dict(weight_decay=1e-3, steps=30, optimizer="ngd", features="normalized",
                                           normalize="words")),
        "ce_mixup_etf": (hard, dict(weight_decay=1e-3, steps=30, mixup_alpha=0.4, classifier="etf",
                                    label_smoothing=0.05)),
        "ce_fixed_h_layers_ngd": (soft, dict(weight_decay=1e-3, steps=30, optimizer="ngd", features="fixed_h",
                                             depth=1, layer_init="random", h0=h0_soft)),
        "ce_fixed_h_gd": (soft, dict(weight_decay=0.0, steps=30, optimizer="gd", features="fixed_h", h0=h0_soft)),
        "ce_bias_layernorm_minibatch": (soft, dict(weight_decay=1e-3, steps=40, bias=True, layernorm=True,
                                                   batch_size=4, lr=0.1)),
        "ce_word_layernorm_feature_decay": (soft, dict(weight_decay=1e-3, feature_decay=1e-2, steps=30,
                                                       word_layernorm=True, lr_schedule="constant")),
        "mse_bias_deep_identity_adam": (hard, dict(weight_decay=1e-3, steps=30, loss="mse", bias=True,
                                                   features="deep_linear", depth=1, init_scale=0.3)),
    }


def run_case(targets, kwargs) -> dict:
    from ufm.train import train_ufm

    r = train_ufm(targets, 4, device="cpu", seed=5, snapshots=4, track_metrics=True, **kwargs)
    out = dict(W=r.W.numpy().tolist(), H=r.H.numpy().tolist(), features=r.features().numpy().tolist(),
               words=r.words().numpy().tolist(),
               bias=None if r.bias is None else r.bias.numpy().tolist(),
               layers=[layer.numpy().tolist() for layer in r.layer_features()],
               history=[{k: v for k, v in row.items() if k != "metrics"} for row in r.history],
               metrics=[row.get("metrics", {}).get("nc1_trace_ratio") for row in r.history])
    return out


def main() -> None:
    PINNED.write_text(json.dumps({name: run_case(t, kw) for name, (t, kw) in cases().items()}, indent=0))
    print(f"wrote {PINNED}")


if __name__ == "__main__":
    main()
