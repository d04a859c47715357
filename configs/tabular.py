"""A user's own table (rows of continuous numbers, 2 to ~100 columns, hundreds to tens of
thousands of rows): `python main.py configs/tabular.py --set data.root=my_table.npz`.

The npz holds `x` (N, D) and optionally `x_test` and `x_val` (docs/guide/data.md); the run goes to
runs/tabular-<file name>. A fifth of the training rows validate (unless `x_val` is given): the
validation NLL is computed every 100 steps, the best model is kept (checkpoints/best) and training
stops after 10 evaluations without a better one, so the step count needs no tuning; the sample
and likelihood phases use the best model, and the likelihood phase puts a full-covariance
Gaussian, a Gaussian mixture and a kernel density estimate beside it, paired on the test rows.
The network was chosen on the validation NLL of scikit-learn's wine table and the recipe measured
on wine and breast cancer against the baselines (docs/results/own-data.md).
"""

from sgm.config import (
    Config,
    DataConfig,
    LikelihoodConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)

config = Config(
    name="tabular",
    data=DataConfig(name="array", val_fraction=0.2),
    model=ModelConfig(net="mlp", width=128, depth=2, prediction="v", dropout=0.1),
    train=TrainConfig(steps=20000, batch_size=256, lr=1e-3, warmup=100, decay="constant", ema=0.99,
                      weighting="likelihood", importance=True, log_every=100, eval_every=100,
                      patience=10, ckpt_every=1000),
    sample=SampleConfig(method="unipc", steps=20, num=2000),
    likelihood=LikelihoodConfig(num=100_000, solver_check=0.1),
)
