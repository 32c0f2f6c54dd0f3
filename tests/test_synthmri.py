"""The CT -> MRI translator (task synthmri): its training step, on hand-made batches."""

from __future__ import annotations

import pytest
import torch

from medgen.engines.synthct import HAS_CT
from medgen.engines.synthmri import synthmri_step
from medgen.keys import Keys
from medgen.models.synthct import SynthCTDiscriminatorConfig
from medgen.models.synthmri import SynthMRILossConfig
from medgen.networks.generators import build_discriminator


def _scale(value: float, trainable: bool = True) -> torch.nn.Conv2d:
    net = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(value)
        net.bias.zero_()
    for p in net.parameters():
        p.requires_grad_(trainable)
    return net


def _step(net, back, disc, lr_d=0.1, lambda_gan=2.0, lambda_cycle=10.0):
    return synthmri_step(net, disc, back, torch.optim.SGD(net.parameters(), lr=0.01),
                         torch.optim.SGD(disc.parameters(), lr=lr_d), SynthMRILossConfig(lambda_gan, lambda_cycle),
                         torch.device("cpu"))


def test_the_generator_translates_the_cts_and_the_discriminator_learns_the_mris():
    torch.manual_seed(0)
    net, back = _scale(2.0), _scale(1.0, trainable=False)  # G(ct) = 2 ct; the frozen translator: the identity
    disc = build_discriminator(SynthCTDiscriminatorConfig(ndf=4, n_layers=1), 2)
    seen = []
    disc.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach().clone()))
    d_before = [p.detach().clone() for p in disc.parameters()]
    x = torch.rand(4, 1, 16, 16) - 0.5
    out = _step(net, back, disc)(None, {Keys.IMAGE: x, HAS_CT: torch.tensor([[1.], [0.], [1.], [0.]])})
    ct, mri = x[[0, 2]], x[[1, 3]]
    assert [len(t) for t in seen] == [2, 2, 2]  # G's LSGAN term on the 2 CT outputs; then D: 2 real MRIs, 2 outputs
    assert torch.allclose(seen[0], 2 * ct) and torch.allclose(seen[1], mri) and torch.allclose(seen[2], 2 * ct)
    assert out["cycle"] == pytest.approx(float(ct.abs().mean()), rel=1e-5)  # |T(G(ct)) - ct| = |2 ct - ct|
    assert out["loss"] == pytest.approx(2.0 * out["gan"] + 10.0 * out["cycle"], rel=1e-5)
    assert float(back.weight.detach()) == 1.0 and back.weight.grad is None  # the translator is frozen
    assert float(net.weight.detach()) < 2.0  # the cycle pulls G towards what the translator gives back as the CT
    assert any(not torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))


def test_a_cycle_that_gives_the_ct_back_costs_nothing():
    net, back = _scale(2.0), _scale(0.5, trainable=False)  # T(G(ct)) = ct exactly
    disc = build_discriminator(SynthCTDiscriminatorConfig(ndf=4, n_layers=1), 2)
    out = _step(net, back, disc, lambda_gan=0.0)(None, {Keys.IMAGE: torch.rand(2, 1, 8, 8),
                                                        HAS_CT: torch.tensor([[1.], [1.]])})
    assert out["cycle"] == pytest.approx(0.0, abs=1e-7) and out["loss"] == pytest.approx(0.0, abs=1e-6)
    assert out["loss_d"] == 0.0  # no MRI in the batch: the discriminator did not train (0, not NaN: NaN stops training)


def test_a_batch_of_mris_only_changes_nothing():
    net, back = _scale(2.0), _scale(1.0, trainable=False)
    disc = build_discriminator(SynthCTDiscriminatorConfig(ndf=4, n_layers=1), 2)
    d_before = [p.detach().clone() for p in disc.parameters()]
    out = _step(net, back, disc)(None, {Keys.IMAGE: torch.rand(2, 1, 8, 8), HAS_CT: torch.tensor([[0.], [0.]])})
    assert out == {"loss": 0.0, "gan": 0.0, "cycle": 0.0, "liver": 0.0, "loss_d": 0.0}
    assert float(net.weight.detach()) == 2.0 and all(torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))


def test_the_liver_loss_pulls_the_output_in_the_cts_liver_to_the_mris_level():
    """lambda_liver: |mean of G(ct) inside the CT patches' liver (class 1) - level|, hand-computed; MRI patches and
    voxels outside the liver do not count, and a batch whose CTs have no liver adds nothing."""
    net, back = _scale(2.0), _scale(0.5, trainable=False)  # the cycle gives the CT back exactly: the loss is the rest
    disc = build_discriminator(SynthCTDiscriminatorConfig(ndf=4, n_layers=1), 2)
    x = torch.zeros(3, 1, 8, 8)
    x[0, 0, 0, :2], x[0, 0, 1, 0], x[0, 0, 3, 3], x[2, 0, 0, 0] = 0.1, 0.4, 0.9, 0.8  # 0.9: outside the liver
    label = torch.zeros(3, 1, 8, 8)
    label[0, 0, :2, :2], label[2] = 1, 1  # 4 liver voxels of the CT (0.1, 0.1, 0.4, 0); the MRI's liver: not counted
    batch = {Keys.IMAGE: x, Keys.LABEL: label, HAS_CT: torch.tensor([[1.0], [1.0], [0.0]])}
    step = synthmri_step(net, disc, back, torch.optim.SGD(net.parameters(), lr=0.01),
                         torch.optim.SGD(disc.parameters(), lr=0.0), SynthMRILossConfig(0.0, 10.0, 3.0),
                         torch.device("cpu"), level=-0.5)
    out = step(None, batch)
    assert out["liver"] == pytest.approx(abs(2 * 0.6 / 4 + 0.5), rel=1e-5)  # G doubles: mean 0.3 against -0.5
    assert out["loss"] == pytest.approx(3.0 * out["liver"], rel=1e-5)
    assert float(net.weight.detach()) < 2.0  # pulled down towards the MRIs' darker liver
    no_liver = {**batch, Keys.LABEL: torch.zeros(3, 1, 8, 8)}
    assert step(None, no_liver)["liver"] == 0.0


def test_synthmri_needs_its_translator_and_mris():
    from medgen.engines.synthmri import setup
    from medgen.errors import MedgenError
    from medgen.models.synthmri import SynthMRIConfig

    with pytest.raises(MedgenError, match="needs translator"):
        setup(SynthMRIConfig(), torch.device("cpu"))
    with pytest.raises(MedgenError, match="needs target.images"):
        setup(SynthMRIConfig(translator="runs/t"), torch.device("cpu"))
    cfg = SynthMRIConfig(translator="runs/t", loss=SynthMRILossConfig(lambda_liver=1.0))
    cfg.target.images = "mris/"
    with pytest.raises(MedgenError, match="lambda_liver needs target.labels"):
        setup(cfg, torch.device("cpu"))


def test_synthmri_generator_reads_the_ct_classes_with_label_input():
    """classes > 0: the generator's input is the CT patch and one channel per class (1 inside it), CT samples only;
    the discriminator sees each patch beside its liver (class 1): the output with the CT's, the MRI with its own."""
    seen, judged = [], []
    net = torch.nn.Conv2d(3, 1, 1)
    net.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach().clone()))
    disc = build_discriminator(SynthCTDiscriminatorConfig(ndf=4, n_layers=1), 2, in_channels=2)
    disc.register_forward_hook(lambda _m, inputs, _o: judged.append(inputs[0].detach().clone()))
    step = synthmri_step(net, disc, torch.nn.Identity(), torch.optim.SGD(net.parameters(), lr=0.0),
                         torch.optim.SGD(disc.parameters(), lr=0.0), SynthMRILossConfig(), torch.device("cpu"), classes=2)
    x = torch.rand(3, 1, 8, 8)
    label = torch.zeros(3, 1, 8, 8)
    label[0, :, :4], label[1, :, 4:], label[2, :, :, :2] = 1, 2, 1
    step(None, {Keys.IMAGE: x, Keys.LABEL: label, HAS_CT: torch.tensor([[1.0], [1.0], [0.0]])})
    inputs = seen[0]
    assert inputs.shape == (2, 3, 8, 8) and torch.equal(inputs[:, :1], x[:2])  # the 2 CTs, not the MRI
    assert torch.equal(inputs[:, 1:2], (label[:2] == 1).float()) and torch.equal(inputs[:, 2:], (label[:2] == 2).float())
    fake = net(inputs).detach()
    assert [t.shape[:2] for t in judged] == [(2, 2), (1, 2), (2, 2)]  # G's term; then D: the MRI, the outputs
    assert torch.allclose(judged[0][:, :1], fake) and torch.equal(judged[0][:, 1:], (label[:2] == 1).float())
    assert torch.equal(judged[1], torch.cat([x[2:], (label[2:] == 1).float()], 1))
