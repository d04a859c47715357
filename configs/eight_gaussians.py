"""Eight Gaussians on a circle (2-D, known density; entropy 2.83 nats): the default experiment."""

from sgm.config import Config, DataConfig, ModelConfig, SampleConfig, TrainConfig

config = Config(
    name="eight_gaussians",
    data=DataConfig(name="eight_gaussians"),
    model=ModelConfig(net="mlp", width=256, depth=3),
    train=TrainConfig(steps=15000, batch_size=256, lr=2e-3),
    sample=SampleConfig(method="em", steps=500, num=2000),
)
