"""Where a run's numbers go (metrics.jsonl, TensorBoard, Weights & Biases), and progress bars.

`open_trackers(names, workdir, start=...)` opens one `Tracker` per name of `train.log_to`:

    jsonl        <workdir>/metrics.jsonl, one strict-JSON record per line (a non-finite value: null)
    tensorboard  <workdir>/tensorboard/, event files written with tensorboardX (extra "tensorboard")
    wandb        a W&B run whose files live in <workdir>/wandb/ (extra "wandb"); offline unless an
                 API key is configured (WANDB_API_KEY or a netrc entry) or WANDB_MODE says otherwise

Every tracker takes scalars `scalars(step, {"loss": ..., "eval_nll": ...})` and figures
`figure(step, name, png_path)` (jsonl ignores figures: they are in figs/). `start` is the step the
run resumes from, and a resumed run continues the same record without repeating a step: metrics.jsonl
drops the lines an interrupted run wrote after its last checkpoint; TensorBoard gets a new event file
in the same folder whose first event purges every step after `start` (TensorBoard's own rule for a
restarted run); W&B resumes the run whose id is kept in <workdir>/wandb.json (`resume="allow"`) and
skips the steps an earlier process already sent (W&B keeps a run's steps increasing). Only process 0
opens trackers (main.py); nothing here is imported by the library.

`Bar` is a tqdm bar usable as the `progress(done, total)` hook of `sgm.sample` and of
`evaluate.heldout_likelihood`; the library itself never prints.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import netrc
import os
import secrets
import string
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .checkpoint import write_atomic
from .errors import ConfigError, SGMError

#: logger name -> (the module it imports, the pyproject extra that installs it)
LOGGERS = {"jsonl": (None, None), "tensorboard": ("tensorboardX", "tensorboard"),
           "wandb": ("wandb", "wandb")}


def check(names: Sequence[str]) -> None:
    """Raises ConfigError unless every name is a logger whose package is installed."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"train.log_to has {name!r}: expected names among "
                              f"{', '.join(LOGGERS)}.")
        module, extra = LOGGERS[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.log_to={name!r} needs the {module} package: "
                              f'pip install -e ".[{extra}]".')
    if len(set(names)) != len(names):
        raise ConfigError(f"train.log_to={tuple(names)!r} names a logger twice.")


def tag(key: str) -> str:
    """The dashboard name of a metric: "eval_nll" -> "eval/nll", "test_bpd" -> "test/bpd",
    "loss" -> "train/loss"."""
    group, _, rest = key.partition("_")
    return f"{group}/{rest}" if group in ("eval", "test") and rest else "train/" + key


def _finite(values: Mapping[str, object]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or v is None:
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[k] = v
    return out


class Tracker:
    """Takes a run's scalars and figures; this base takes nothing (process != 0, empty log_to)."""

    takes_figures = False

    def scalars(self, step: int, values: Mapping[str, object]) -> None:
        pass

    def figure(self, step: int, name: str, path: str | os.PathLike) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.close(failed=kind is not None)


class Jsonl(Tracker):
    """metrics.jsonl: `{"step": step, **values}` per call, non-finite values as null.

    Opening it keeps the records up to `start` (the step resumed from) and drops a half-written
    last line (a write cut short by a full disk or a kill). A value already recorded for a step is
    not written again, so rerunning a finished command or resuming repeatedly logs no step twice.
    """

    def __init__(self, path: str | os.PathLike, *, start: int):
        self.path = Path(path)
        rows, clean = _parse_jsonl(self.path)
        kept = [r for r in rows if r.get("step", 0) <= start]
        if len(kept) < len(rows) or not clean:
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.logged = {(r.get("step", 0), k) for r in kept for k in r if k != "step"}

    def scalars(self, step, values):
        rec = {"step": int(step)}
        for k, v in values.items():
            if (int(step), k) not in self.logged:
                rec[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        if len(rec) == 1:
            return
        _append_whole(self.path, (json.dumps(rec, allow_nan=False) + "\n").encode())
        self.logged.update((int(step), k) for k in rec if k != "step")


def _append_whole(path: str | os.PathLike, data: bytes) -> None:
    """Appends `data` to the file at `path` (made if absent) all or nothing: if the write fails
    part-way (a full disk, a signal), the file is cut back to its length before and the error
    passes on, naming `path`."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException as e:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass  # the error that stopped the write is the one to report
            if isinstance(e, OSError) and e.filename is None:
                raise type(e)(e.errno, e.strerror, str(path)) from None
            raise
    finally:
        os.close(fd)


def _parse_jsonl(path: Path) -> tuple[list[dict], bool]:
    """The records of a JSON-lines file and whether it is intact. A last line that is cut short
    (no newline, or not JSON) is a write that did not finish: it is dropped and the file is not
    intact. Any other line that is not a JSON object is damage a person must look at."""
    if not path.exists():
        return [], True
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    rows, clean = [], True
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        last = i == len(lines) - 1 or (i == len(lines) - 2 and not lines[-1])
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step", 0), int):
            if last:
                clean = False  # a half-written last record
                continue
            raise SGMError(f"{path} line {i + 1} is not a metrics record; move the file away to "
                           f"start a new one.")
        if i == len(lines) - 1:  # complete JSON but its newline never reached the disk
            clean = False
        rows.append(row)
    return rows, clean


def read_jsonl(path: str | os.PathLike, upto: int | None = None) -> list[dict]:
    """The records of a metrics.jsonl (those with step <= `upto`); [] if there is none. A
    half-written last line is left out."""
    rows, _ = _parse_jsonl(Path(path))
    return [r for r in rows if upto is None or r.get("step", 0) <= upto]


_files = itertools.count()  # event files opened by this process (a unique, ordered file name)


class TensorBoard(Tracker):
    """Event files in one log folder; each opening purges the steps after `start`."""

    takes_figures = True

    def __init__(self, logdir: str | os.PathLike, *, start: int):
        from tensorboardX import SummaryWriter

        # TensorBoard reads a folder's event files in name order: the time in seconds, then this
        # suffix, so a run resumed within the same second still sorts after the one it resumes.
        suffix = f".{start:010d}.{os.getpid()}.{next(_files)}"
        self.writer = SummaryWriter(str(logdir), purge_step=start + 1, filename_suffix=suffix,
                                    flush_secs=10)

    def scalars(self, step, values):
        for k, v in _finite(values).items():
            self.writer.add_scalar(tag(k), v, global_step=int(step))

    def figure(self, step, name, path):
        import numpy as np
        from PIL import Image

        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
        self.writer.add_image(f"figures/{name}", rgb, global_step=int(step), dataformats="HWC")

    def close(self, failed=False):
        self.writer.close()


def _wandb_online() -> bool:
    """Whether W&B has credentials here: WANDB_API_KEY, or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    path = os.environ.get("NETRC", os.path.join(os.path.expanduser("~"), ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host.split(":")[0]) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _next_second_if_taken(folder: Path, run_id: str) -> None:
    """W&B names a process's run folder after the second it starts in (local time): a second
    process on the same run within that second would write over the first one's records."""
    for _ in range(3):
        stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
        if not any(folder.glob(f"*run-{stamp}-{run_id}")):
            return
        time.sleep(1.01 - time.time() % 1.0)


def _run_id() -> str:
    """A new W&B run id: 8 lower-case letters and digits, as W&B makes them."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandB(Tracker):
    """One W&B run per work directory, resumed by every later command on it."""

    takes_figures = True

    def __init__(self, workdir: str | os.PathLike, *, start: int, name: str | None = None,
                 hparams: dict | None = None):
        import wandb

        self.wandb = wandb
        self.state_path = Path(workdir) / "wandb.json"
        try:
            state = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        self.run_id = state.get("id") or _run_id()
        self.sent = int(state.get("step", -1))  # the last step an earlier process sent
        self.last = self.sent
        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_online() else "offline")
        _next_second_if_taken(Path(workdir) / "wandb", self.run_id)
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sgm"), name=name,
                                  id=self.run_id, resume="allow", dir=str(workdir), config=hparams,
                                  mode=mode, settings=wandb.Settings(console="off"))
        except wandb.errors.Error as e:  # no network, a bad key, ...: one sentence, exit 2
            raise SGMError(f"W&B could not start run {self.run_id} ({type(e).__name__}: {e}); "
                           f"WANDB_MODE=offline logs to {workdir}/wandb without a network.") from None
        self._save()

    def _save(self):
        write_atomic(self.state_path, json.dumps({"id": self.run_id, "step": self.last}) + "\n")

    def _log(self, step, data):
        if step <= self.sent or not data:  # sent before the checkpoint this run resumed from
            return
        self.run.log(data, step=int(step))
        if step > self.last:
            self.last = int(step)
            self._save()

    def scalars(self, step, values):
        self._log(step, {tag(k): v for k, v in _finite(values).items()})

    def figure(self, step, name, path):
        self._log(step, {f"figures/{name}": self.wandb.Image(str(path))})

    def close(self, failed=False):
        self.run.finish(exit_code=1 if failed else 0)
        self.wandb.teardown()  # waits for W&B's service to write everything out


class Trackers(Tracker):
    """Several trackers as one: each call goes to all of them."""

    def __init__(self, trackers: Sequence[Tracker] = ()):
        self.trackers = list(trackers)
        self.takes_figures = any(t.takes_figures for t in self.trackers)

    def scalars(self, step, values):
        for t in self.trackers:
            t.scalars(step, values)

    def figure(self, step, name, path):
        if path is None:  # no figure for this kind of data
            return
        for t in self.trackers:
            if t.takes_figures:
                t.figure(step, name, path)

    def close(self, failed=False):
        for t in reversed(self.trackers):
            t.close(failed)
        self.trackers = []


def open_trackers(names: Sequence[str], workdir: str | os.PathLike, *, start: int,
                  name: str | None = None, hparams: dict | None = None) -> Trackers:
    """The trackers of `names` (see the module docstring) for a run resuming from step `start`."""
    check(names)
    workdir = Path(workdir)
    opened: list[Tracker] = []
    try:
        for n in names:
            if n == "jsonl":
                opened.append(Jsonl(workdir / "metrics.jsonl", start=start))
            elif n == "tensorboard":
                opened.append(TensorBoard(workdir / "tensorboard", start=start))
            else:
                opened.append(WandB(workdir, start=start, name=name, hparams=hparams))
    except BaseException:
        Trackers(opened).close(failed=True)
        raise
    return Trackers(opened)


class Bar:
    """A tqdm bar as a progress hook `bar(done, total)`, redrawn every `tick` seconds meanwhile.

    Safe to call from JAX host callbacks (any thread, any order: the bar only moves forwards);
    the timer keeps the elapsed time moving while one long solve runs. Use as a context manager.
    """

    def __init__(self, desc: str, total: int | None = None, *, unit: str = "step",
                 tick: float = 1.0):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.timer = threading.Thread(target=self._tick, args=(tick,), daemon=True)
        self.timer.start()

    def _tick(self, every):
        while not self.stop.wait(every):
            with self.lock:
                self.bar.refresh()

    def __call__(self, done, total=None):
        with self.lock:
            if total is not None and self.bar.total != total:
                self.bar.total = total
            delta = int(done) - self.bar.n
            if delta > 0:
                self.bar.update(delta)

    def close(self, finished: bool = True):
        """Stops the bar, first filling it to its total when `finished` (a sampler reports the
        start of its last step, not its end)."""
        self.stop.set()
        self.timer.join()
        with self.lock:
            if finished and self.bar.total is not None and self.bar.n < self.bar.total:
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.close(finished=kind is None)
