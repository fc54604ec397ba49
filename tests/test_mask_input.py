"""diffusion.mask_input: what the network reads for x_t, the same in training as in sampling."""

import torch

from segdiff.config import ExperimentConfig
from segdiff.models import build_model


class _Recorder(torch.nn.Module):
    """A network that records the mask input and the steps of each training call."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x_t, t, image, x0_prev=None, **kwargs):
        self.seen.append((x_t.detach().clone(), t.clone()))
        return self.inner(x_t, t, image, x0_prev, **kwargs)


def test_training_feeds_the_network_the_posterior_mean_of_the_same_x_t():
    plain = build_model(ExperimentConfig.tiny())
    posterior = build_model(ExperimentConfig.tiny().override(["diffusion.mask_input=posterior_mean"]))
    net = _Recorder(plain.net)
    g = torch.Generator().manual_seed(0)
    image, mask = torch.rand(16, 3, 32, 32, generator=g), (torch.rand(16, 1, 32, 32, generator=g) > 0.5).float()
    for model in (plain, posterior):  # the same draws of t and noise: the same x_t, read two ways
        model.loss(net, image, mask, torch.Generator().manual_seed(1), model.config.train, slice(None))
    (x_t, t), (seen, t_again) = net.seen
    assert torch.equal(t, t_again) and x_t.abs().max() > 1  # x_t itself by default: noise goes past +-1
    torch.testing.assert_close(seen, posterior.scheduler.network_input(x_t, t))
    assert seen.abs().max() <= 1  # a tanh (1.0 itself in float32 at low noise)
