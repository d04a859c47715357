"""Any folder of images (e.g. Oxford Flowers in data/flowers), 64x64, DiT backbone."""

from sgm.config import Config, DataConfig, LikelihoodConfig, ModelConfig, SampleConfig, TrainConfig

config = Config(
    name="flowers",
    data=DataConfig(name="flowers", root="data/flowers", image_size=64),
    model=ModelConfig(net="dit", patch=4, width=384, depth=12, heads=6),
    train=TrainConfig(steps=200000, batch_size=64, lr=1e-4, warmup=5000, ema=0.9999,
                      ckpt_every=10000, eval_every=50000),
    sample=SampleConfig(method="ode", num=36),
    likelihood=LikelihoodConfig(num=500, batch=50, exact=False),
)
