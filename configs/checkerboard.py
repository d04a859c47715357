"""Checkerboard (2-D, uniform on 8 squares of area 4: entropy ln 32 = 3.466 nats).

v prediction with likelihood weighting and importance-sampled time, as the default experiment,
16000 steps (docs/results/maximum-likelihood.md: paired held-out gap 0.038 +- 0.006 nats on 2000
points, 8 min of training; 0.066 +- 0.007 at 8000 steps; 0.20 in an earlier run with eps and
sigma^2 weighting).
"""

from sgm.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    name="checkerboard",
    data=DataConfig(name="checkerboard"),
    model=ModelConfig(net="mlp", width=256, depth=4, prediction="v"),
    train=TrainConfig(steps=16000, batch_size=512, lr=2e-3, ema=0.995, weighting="likelihood",
                      importance=True),
)
