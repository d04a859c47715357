"""Checkerboard (2-D, uniform on 8 squares of area 4: entropy ln 32 = 3.466 nats).

v prediction with likelihood weighting and importance-sampled time, as the default experiment
(docs/results/maximum-likelihood.md: held-out gap 0.056 nats; 0.20 in an earlier run with eps and sigma^2
weighting).
"""

from sgm.config import Config, DataConfig, ModelConfig, TrainConfig

config = Config(
    name="checkerboard",
    data=DataConfig(name="checkerboard"),
    model=ModelConfig(net="mlp", width=256, depth=4, prediction="v"),
    train=TrainConfig(steps=8000, batch_size=512, lr=2e-3, ema=0.995, weighting="likelihood",
                      importance=True),
)
