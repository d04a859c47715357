"""Gaussian random fields P(k) = A k^-B on a 16x16 periodic grid, conditioned on (A, B)."""

from sgm.config import Config, DataConfig, LikelihoodConfig, ModelConfig, SampleConfig, TrainConfig

config = Config(
    name="grf",
    data=DataConfig(name="grf", image_size=16, n_train=10000, n_test=500),
    model=ModelConfig(net="unet", base=32, channel_mults=(1, 2), conditional=True),
    train=TrainConfig(steps=6000, batch_size=64, lr=1e-3),
    sample=SampleConfig(method="em", steps=500, num=16),
    likelihood=LikelihoodConfig(num=100, batch=50, exact=False, probes=4),
)
