"""Two moons (2-D)."""

from sgm.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    name="moons",
    data=DataConfig(name="moons"),
    model=ModelConfig(net="mlp", width=128, depth=3),
    train=TrainConfig(steps=4000, batch_size=256, lr=2e-3),
)
