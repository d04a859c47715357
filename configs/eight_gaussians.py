"""Eight Gaussians on a circle (2-D, known density; entropy 2.83 nats): the default experiment.

The recipe is the best of `bench/sweep.py` at about two minutes of training on a 2-core CPU
(docs/results/maximum-likelihood.md): v prediction, likelihood weighting with importance-sampled time,
and a small network run for more steps on larger batches. The network's time features are
sinusoids of 10 t (`model.time_scale`; 1000 t elsewhere) and log t: the field it learns is smooth in
t, so the likelihood's ODE takes 173 evaluations instead of 404 with every point's error smaller,
at rtol = atol = 5e-6 (docs/results/likelihood-engine.md, "A smooth time embedding").
"""

from sgm.config import (Config, DataConfig, LikelihoodConfig, ModelConfig, SampleConfig,
                        TrainConfig)

config = Config(
    name="eight_gaussians",
    data=DataConfig(name="eight_gaussians"),
    model=ModelConfig(net="mlp", width=128, depth=2, prediction="v", time_scale=10.0),
    train=TrainConfig(steps=9000, batch_size=512, lr=2e-3, ema=0.995, weighting="likelihood",
                      importance=True),
    sample=SampleConfig(method="em", steps=500, num=2000),
    likelihood=LikelihoodConfig(rtol=5e-6, atol=5e-6),
)
