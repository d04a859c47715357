"""`python -m sgm.quality RUN [--samples FILE] [--cache DIR]`: the offline quality score of a run.

The command's argument parsing and exit codes around `sgm.run.score_run`, as `main.py` is around
`sgm.run.main`. `sgm.quality` is a library module below the builder and imports nothing above
it; run as a program, it hands over to `main` here.

    python -m sgm.quality runs/fashion_mnist_cpu        # scores runs/.../samples.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import quality, run
from .errors import SGMError


def main(argv=None) -> int:
    """`python -m sgm.quality RUN [--samples FILE] [--cache DIR]`: 0 when done; 2 for bad input
    or a failed write, with one line on stderr; 130 on Ctrl-C (every file whole)."""
    p = argparse.ArgumentParser(prog="python -m sgm.quality",
                                description=quality.__doc__.splitlines()[0])
    p.add_argument("run", help="work directory of a main.py run on labelled images")
    p.add_argument("--samples", default=None, help="samples file (default RUN/samples.npz)")
    p.add_argument("--cache", default=None,
                   help="classifier cache folder (default $SGM_CACHE, else ~/.cache/sgm)")
    a = p.parse_args(argv)
    try:
        q = run.score_run(a.run, samples=a.samples, cache_dir=a.cache)
    except SGMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a full disk while writing the classifier or quality.json
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; every file already written is complete.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; every file written so far is complete.", file=sys.stderr)
        return 130
    for key, value in q.items():
        print(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"-> {Path(a.run) / 'quality.json'}")
    return 0


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
