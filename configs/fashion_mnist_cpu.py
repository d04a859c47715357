"""Fashion-MNIST on a laptop: a class-conditional UNet that trains in about 39 minutes on 2 cores.

The CPU version of `configs/fashion_mnist.py`: the same data (Debian's `dataset-fashion-mnist`, or
`data.root` pointing at a folder of the four idx files -- MNIST's work too) and the same
class-conditional UNet with classifier-free guidance, made small enough for a CPU: base 16
channels, 28 -> 14 -> 7 at 16/32/64 channels, one residual block per level, self-attention only in
the middle (0.72M parameters). Noise prediction with the sigma^2 weighting, batch 64, 5000 steps
(5.3 epochs), EMA 0.999 with its warm-up, each batch split over two CPU devices
(`train.cpu_devices=2`: 1.77x the steps/s of one device on a 2-core machine). Sampling is DDPM's
ancestral sampler at 100 steps, conditional without guidance (`sample.guidance=0`: the network
trained with label dropout can be guided, but guidance makes garments more typical of their class
than real ones and moves the Frechet distance away from the test set's); `sample.quality` scores
the samples with the offline classifier (`sgm.quality`). docs/results/fashion-mnist.md has the
measurements that chose it and what it reaches.
"""

from sgm.config import Config, DataConfig, LikelihoodConfig, ModelConfig, SampleConfig, TrainConfig

config = Config(
    name="fashion_mnist_cpu",
    data=DataConfig(name="fashion_mnist"),
    model=ModelConfig(net="unet", base=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                      conditional=True, label_dropout=0.1),
    train=TrainConfig(steps=5000, batch_size=64, lr=2e-3, warmup=200, ema=0.999,
                      ckpt_every=500, log_every=50, cpu_devices=2),
    sample=SampleConfig(method="ddpm", steps=100, num=100, guidance=0.0, quality=True),
    likelihood=LikelihoodConfig(num=20, batch=20, exact=False, rtol=1e-4, atol=1e-4),
)
