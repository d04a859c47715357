"""scikit-learn's 8x8 handwritten digits (17 grey levels), class-conditional UNet with guidance."""

from sgm.config import Config, DataConfig, LikelihoodConfig, ModelConfig, SampleConfig, TrainConfig

config = Config(
    name="digits",
    data=DataConfig(name="digits"),
    model=ModelConfig(net="unet", base=32, channel_mults=(1, 2), num_res_blocks=1,
                      attn_resolutions=(4,), conditional=True, label_dropout=0.1),
    train=TrainConfig(steps=3000, batch_size=128, lr=1e-3, ema=0.999),
    sample=SampleConfig(method="em", steps=500, num=100, guidance=1.0),
    likelihood=LikelihoodConfig(num=99, batch=99, exact=False, probes=2, rtol=1e-4, atol=1e-4),
)
