"""MNIST from disk (idx files or mnist.npz in data/mnist), class-conditional UNet."""

from sgm.config import Config, DataConfig, LikelihoodConfig, ModelConfig, SampleConfig, TrainConfig

config = Config(
    name="mnist",
    data=DataConfig(name="mnist", root="data/mnist"),
    model=ModelConfig(net="unet", base=64, channel_mults=(1, 2, 2), num_res_blocks=2,
                      attn_resolutions=(7,), dropout=0.1, conditional=True, label_dropout=0.1),
    train=TrainConfig(steps=100000, batch_size=128, lr=2e-4, warmup=1000, ema=0.9999,
                      ckpt_every=5000, eval_every=10000),
    sample=SampleConfig(method="pc", steps=1000, num=64, guidance=1.0),
    likelihood=LikelihoodConfig(num=1000, batch=100, exact=False),
)
