"""CIFAR-10 from disk (the binary version in data/cifar10), DDPM++-style UNet on the VP SDE."""

from sgm.config import Config, DataConfig, LikelihoodConfig, ModelConfig, SampleConfig, TrainConfig

config = Config(
    name="cifar10",
    data=DataConfig(name="cifar10", root="data/cifar10"),
    model=ModelConfig(net="unet", base=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                      attn_resolutions=(16,), dropout=0.1),
    train=TrainConfig(steps=400000, batch_size=128, lr=2e-4, warmup=5000, ema=0.9999,
                      ckpt_every=10000, eval_every=50000),
    sample=SampleConfig(method="pc", steps=1000, num=64),
    likelihood=LikelihoodConfig(num=1000, batch=100, exact=False),
)
