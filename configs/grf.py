"""Gaussian random fields P(k) = A k^-B on a 16x16 periodic grid, conditioned on (A, B).

The UNet pads circularly (`periodic=True`), matching the fields' torus. The exact log-density of
every test field is known, so the held-out NLL is reported next to it (`true_nll`).
"""

from sgm.config import Config, DataConfig, LikelihoodConfig, ModelConfig, SampleConfig, TrainConfig

config = Config(
    name="grf",
    data=DataConfig(name="grf", image_size=16, n_train=10000, n_test=500),
    model=ModelConfig(net="unet", base=16, channel_mults=(1, 2), conditional=True, periodic=True),
    train=TrainConfig(steps=4000, batch_size=64, lr=1e-3),
    sample=SampleConfig(method="em", steps=500, num=16),
    likelihood=LikelihoodConfig(num=20, batch=20, exact=False, probes=4),  # ~4.5 min on 2 CPU cores
)
