"""Checkerboard (2-D, uniform on 8 squares of area 4: entropy ln 32 = 3.466 nats)."""

from sgm.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    name="checkerboard",
    data=DataConfig(name="checkerboard"),
    model=ModelConfig(net="mlp", width=256, depth=4),
    train=TrainConfig(steps=8000, batch_size=512, lr=2e-3),
)
