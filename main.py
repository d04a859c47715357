"""Train a score model, sample from it and compute test log-likelihoods.

    python main.py                                  # embedded default experiment (eight Gaussians)
    python main.py configs/digits.py --set train.steps=2000 model.base=32
    python main.py configs/moons.py --mode sample --workdir runs/moons

Everything happens in the work directory (default runs/<config name>): config.json (the resolved
config), metrics.jsonl, checkpoints/, samples.npz, likelihood.json, summary.json and figs/ (and
tensorboard/ or wandb/ with train.log_to=jsonl,tensorboard,wandb).
Rerunning the same command resumes from the latest checkpoint. Bad input (an unknown key, a
value out of range, a missing data file, a checkpoint of another model) gives one sentence on
stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sgm import run

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "eight_gaussians.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="config file (configs/*.py)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. train.steps=2000 model.width=128 (the flag "
                        "may be repeated; later values win)")
    p.add_argument("--mode", choices=run.MODES, default="all")
    p.add_argument("--workdir", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--checkpoint", choices=run.CHECKPOINTS, default="best",
                   help="what sample and likelihood evaluate: the checkpoint with the best "
                        "validation NLL (where training evaluated every train.eval_every steps; "
                        "else the newest) or the newest (default best)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (training, sampling, likelihood)")
    p.add_argument("--density-grid", type=int, default=run.DENSITY_GRID, metavar="N",
                   help="2-D data: the model's density on an N x N grid in figs/density.png, from "
                        f"the probability-flow ODE (default {run.DENSITY_GRID}; 0: no figure)")
    p.add_argument("--coordinator", default=None,
                   help="host:port of process 0 for a multi-host run (or SGM_COORDINATOR)")
    p.add_argument("--num-processes", type=int, default=None, help="processes in a multi-host run")
    p.add_argument("--process-id", type=int, default=None, help="this process's index")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """The command (`sgm.run.main`): exit code 0, 2 on bad input, 130 when stopped by a signal."""
    a = parse_args(argv)
    return run.main(a.config, sets=a.set, mode=a.mode, workdir=a.workdir,
                    progress=not a.no_progress, density_grid=a.density_grid,
                    coordinator=a.coordinator, num_processes=a.num_processes,
                    process_id=a.process_id, checkpoint=a.checkpoint)


if __name__ == "__main__":
    sys.exit(main())
