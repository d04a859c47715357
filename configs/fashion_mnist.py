"""Fashion-MNIST (28x28 grey, 10 classes) from Debian's package, class-conditional UNet.

`apt-get install dataset-fashion-mnist` puts the four idx files in
/usr/share/datasets/fashion-mnist, where `data.name=fashion_mnist` reads them (or set data.root
to another folder of them). The UNet runs at 28 -> 14 -> 7 with attention at 7x7 (7.0M
parameters); classifier-free guidance from 10% label dropout. A GPU run is the intended use: see
docs/results/devices.md for steps/s and time (60k steps of batch 128 are 128 epochs).
"""

from sgm.config import Config, DataConfig, LikelihoodConfig, ModelConfig, SampleConfig, TrainConfig

config = Config(
    name="fashion_mnist",
    data=DataConfig(name="fashion_mnist"),
    model=ModelConfig(net="unet", base=64, channel_mults=(1, 2, 2), num_res_blocks=2,
                      attn_resolutions=(7,), dropout=0.1, conditional=True, label_dropout=0.1),
    train=TrainConfig(steps=60000, batch_size=128, lr=2e-4, warmup=1000, ema=0.9999,
                      ckpt_every=5000, eval_every=10000),
    sample=SampleConfig(method="pc", steps=1000, num=64, guidance=1.0),
    likelihood=LikelihoodConfig(num=1000, batch=100, exact=False),
)
