"""The finite-context transformer (lm_bridge.finite, issue 13): its loss, tracking, resumption."""

import numpy as np
import pytest
import torch

from lm_bridge import finite
from lm_bridge.finite import FiniteContextLM, FiniteLMConfig, finite_lm_loss, train_finite_lm
from lm_bridge.words import word_contexts
from ufm.model import TargetTensors

LINES = ["the cat sat on the mat", "the dog sat on the rug", "a cat ran to the mat", "the dog ran to a rug",
         "a dog sat on a mat", "the cat ran on the rug"] * 3
SMALL = FiniteLMConfig(dim=16, layers=2, heads=2, steps=40, lr=3e-3)


def data():
    return word_contexts([[(w, None) for w in line.split()] for line in LINES], vocab_size=10, context_length=2,
                         min_count=2)


def test_loss_is_the_soft_label_ce_of_the_last_position():
    d = data()
    torch.manual_seed(0)
    model = FiniteContextLM(d.targets.vocab_size, 2, SMALL).double()
    tokens = torch.as_tensor(d.contexts)
    with torch.no_grad():
        got = float(finite_lm_loss(model, tokens, TargetTensors(d.targets, torch.device("cpu"), torch.float64)))
    # Directly: the full causal forward pass written out, softmax of W h at the last position.
    with torch.no_grad():
        x = model.embed(tokens)
        for block in model.blocks:
            x = block(x)
        logits = (model.norm(x[:, -1]) @ model.W.T).numpy()  # (m, V)
    logq = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    P = d.targets.dense()  # (V, m)
    want = -(d.targets.pi * (P.T * logq).sum(1)).sum()
    assert got == pytest.approx(want, rel=1e-10)
    assert got > d.targets.entropy  # CE >= H


def test_layer_states_are_the_last_positions_of_every_layer():
    torch.manual_seed(0)
    model = FiniteContextLM(10, 3, SMALL)
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.no_grad():
        states = model.layer_states(tokens)
        x = model.embed(tokens)
        want = [x[:, -1]]
        for block in model.blocks:
            x = block(x)
            want.append(x[:, -1])
    assert len(states) == SMALL.layers + 2
    for got, ref in zip(states, want + [model.norm(x[:, -1])]):
        torch.testing.assert_close(got, ref)


def test_causal_attention_ignores_later_positions():
    torch.manual_seed(0)
    model = FiniteContextLM(10, 3, SMALL)
    a = torch.tensor([[1, 2, 3]])
    b = torch.tensor([[1, 2, 7]])
    # The states of position 1 cannot see position 2.
    with torch.no_grad():
        xa, xb = model.embed(a), model.embed(b)
        for block in model.blocks:
            xa, xb = block(xa), block(xb)
    torch.testing.assert_close(xa[:, :2], xb[:, :2])


def test_tracking_on_a_tiny_run():
    d = data()
    seen = []
    r = train_finite_lm(d, SMALL, device="cpu", snapshots=[0, 20, 40],
                        observe=lambda W, F: dict(shape=list(F.shape)),
                        layer_observe=lambda states: seen.append(len(states)) or {"layers_seen": len(states)})
    assert r.steps().tolist() == [0, 20, 40]
    gap = r.series("ce_minus_entropy")
    assert gap[-1] < gap[0] / 2 and np.all(gap >= -1e-9)
    last = r.history[-1]
    assert last["shape"] == [16, d.targets.num_contexts] and last["layers_seen"] == 4  # emb, 2 blocks, norm
    assert {"pf_dist", "w_norm", "h_norm", "metrics", "ce"} <= set(last)
    # ||H|| recorded is that of the features the loss sees.
    assert last["h_norm"] == pytest.approx(float(np.linalg.norm(r.features(d))), rel=1e-6)


def interrupt_at_step_25(d, ckpt, snapshots, monkeypatch) -> None:
    """A run with checkpoints every 10 steps, stopped by Ctrl-C in its 26th optimizer step."""
    calls = {"n": 0}
    real = torch.optim.AdamW.step

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 26:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        train_finite_lm(d, SMALL, device="cpu", snapshots=snapshots, checkpoint=ckpt, checkpoint_every=10)
    monkeypatch.setattr(torch.optim.AdamW, "step", real)


def test_interrupted_training_resumes_to_the_same_model(tmp_path, monkeypatch):
    d = data()
    whole = train_finite_lm(d, SMALL, device="cpu", snapshots=[40])
    ckpt = tmp_path / "run.ckpt"
    interrupt_at_step_25(d, ckpt, [40], monkeypatch)
    assert torch.load(ckpt, weights_only=False)["step"] == 20
    resumed = train_finite_lm(d, SMALL, device="cpu", snapshots=[40], checkpoint=ckpt, checkpoint_every=10)
    torch.testing.assert_close(resumed.model.W, whole.model.W, rtol=0, atol=0)
    with pytest.raises(ValueError, match="another configuration or data"):
        train_finite_lm(d, FiniteLMConfig(dim=16, layers=2, heads=2, steps=50), device="cpu", checkpoint=ckpt)


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="dim=10 must be a multiple of heads=4"):
        FiniteLMConfig(dim=10, heads=4)
    with pytest.raises(ValueError, match="layers must be >= 1"):
        FiniteLMConfig(layers=0)
    assert finite.FiniteLMConfig().dim == 128


def test_a_resumed_run_has_the_history_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """The checkpoint at a snapshot step holds that step's record: resuming recorded it again
    (steps [..., 48, 60, 60])."""
    d = data()
    marks = [0, 10, 20, 30, 40]
    whole = train_finite_lm(d, SMALL, device="cpu", snapshots=marks)
    ckpt = tmp_path / "run.ckpt"
    interrupt_at_step_25(d, ckpt, marks, monkeypatch)
    resumed = train_finite_lm(d, SMALL, device="cpu", snapshots=marks, checkpoint=ckpt, checkpoint_every=10)
    assert resumed.resumed_from == 20 and whole.resumed_from is None
    assert resumed.steps().tolist() == whole.steps().tolist() == marks
    assert resumed.series("ce_minus_entropy").tolist() == whole.series("ce_minus_entropy").tolist()


def test_a_garbage_checkpoint_is_refused_by_name(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="run.ckpt is not a readable resume state .* remove it"):
        train_finite_lm(data(), SMALL, device="cpu", checkpoint=ckpt)
    torch.save({"model": {}}, ckpt)
    with pytest.raises(ValueError, match=r"not a resume state of this run \(it lacks optimizer, step"):
        train_finite_lm(data(), SMALL, device="cpu", checkpoint=ckpt)


@pytest.mark.parametrize("options, match", [
    (dict(heads=0), r"heads must be >= 1 \(an integer\), got 0"),
    (dict(dim=2.5), r"dim must be >= 1 \(an integer\), got 2.5"),
    (dict(steps=-1), "steps must be >= 0"),
    (dict(lr=float("nan")), "need lr > 0"),
])
def test_more_bad_configs_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        FiniteLMConfig(**options)
