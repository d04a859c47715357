"""One code path for 1 device, N devices and N hosts: a device mesh with a data axis.

Batches are global `jax.Array`s split along the mesh's "data" axis (`NamedSharding`), parameters,
EMA and optimiser state are replicated, and `jit` partitions the step (GSPMD): the gradient of a
batch mean becomes an all-reduce, with no hand-written communication. Sampling and likelihoods
shard their batch the same way. On several hosts each process feeds its own slice of the global
batch (`jax.make_array_from_process_local_data`), after `initialize()` has started JAX's
distributed runtime.
"""

from __future__ import annotations

import os
import re

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .errors import ConfigError, SGMError

AXIS = "data"


def _env_int(name: str, minimum: int) -> int | None:
    """The integer in environment variable `name` (None when unset or empty); ConfigError unless
    it is written in ASCII digits and is at least `minimum`."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", value) or int(value) < minimum:
        raise ConfigError(f"{name}={value!r} is invalid: expected an integer of at least "
                          f"{minimum}.")
    return int(value)


#: the XLA flag that sets the CPU's device count; where a user has set it, it wins
_CPU_COUNT_FLAG = "--xla_force_host_platform_device_count"


def split_cpu(num_devices: int) -> str | None:
    """Splits the CPU into `num_devices` JAX devices, so that the mesh (`make_mesh`) runs data
    parallel over its cores; 0 leaves JAX's default (one CPU device using every core).

    Sets JAX's `jax_num_cpu_devices` option (on a JAX without it, `XLA_FLAGS`), which holds only
    before JAX's first computation. An accelerator's devices are not affected; a count already
    in `XLA_FLAGS` is kept. Returns None when the CPU is split as asked (or 0 is asked for),
    else one sentence saying why not (JAX started with another count, or `XLA_FLAGS` set one).
    """
    if num_devices < 0:
        raise ConfigError(f"a CPU split into {num_devices} devices was asked for: expected 0 "
                          f"(JAX's default) or a positive number of devices.")
    if num_devices == 0:
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    found = re.search(_CPU_COUNT_FLAG + r"=(\d+)", flags)
    if found:
        have = int(found.group(1))
        return None if have == num_devices else (
            f"XLA_FLAGS sets {have} CPU devices, so the {num_devices} asked for are not used.")
    try:
        jax.config.update("jax_num_cpu_devices", num_devices)
    except AttributeError:  # a JAX without the option reads the XLA flag when it starts
        os.environ["XLA_FLAGS"] = f"{flags} {_CPU_COUNT_FLAG}={num_devices}".strip()
    except RuntimeError:  # JAX already started in this process
        have = len(jax.devices("cpu"))
        if have != num_devices:
            return (f"JAX already started in this process with {have} CPU device(s), so the "
                    f"{num_devices} asked for are not used (the count is set before JAX's first "
                    f"computation, as `python main.py` does).")
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Starts JAX's distributed runtime when launched as several processes.

    Arguments default to the environment variables SGM_COORDINATOR (host:port), SGM_NUM_PROCESSES
    and SGM_PROCESS_ID; with none of them set and a single process nothing happens. Under SLURM
    (SLURM_NTASKS > 1), JAX reads the cluster from SLURM's own variables. On CPU, cross-process
    collectives use gloo.
    """
    coordinator = coordinator or os.environ.get("SGM_COORDINATOR")
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"number of processes {num_processes} is invalid: expected at least 1.")
    num_processes = num_processes or _env_int("SGM_NUM_PROCESSES", 1)
    if process_id is None:
        process_id = _env_int("SGM_PROCESS_ID", 0)
    slurm = (_env_int("SLURM_NTASKS", 1) or 1) > 1
    if coordinator is None and not slurm and (num_processes or 1) == 1:
        if process_id not in (None, 0):
            raise ConfigError(f"process id {process_id} is invalid without a multi-host run: give "
                              f"the number of processes and the coordinator too (--num-processes, "
                              f"--coordinator).")
        return
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # older/newer JAX without the option: the default is used
        pass
    if coordinator is None and not slurm:
        raise ConfigError(f"a run of {num_processes} processes needs the coordinator's host:port "
                          f"(--coordinator or SGM_COORDINATOR).")
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise ConfigError("multi-host start needs the number of processes and this process's id "
                              "(SGM_NUM_PROCESSES, SGM_PROCESS_ID or --num-processes/--process-id).")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"process id {process_id} is invalid: expected 0 .. {num_processes - 1} "
                              f"for {num_processes} processes.")
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"coordinator {coordinator!r} is invalid: expected host:port.")
    try:
        if coordinator is None:
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator, num_processes, process_id)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SGMError(f"could not join the multi-host run (coordinator {coordinator or 'from SLURM'}): "
                       f"{first}") from None


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (default: all devices of all processes)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 0 < num_devices <= len(devices):
            raise ConfigError(f"a mesh of {num_devices} devices was asked for but {len(devices)} are "
                              f"present.")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    """The global batch must split evenly over the devices (and over the processes)."""
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(f"{what}={batch_size} does not divide over the {n} devices: expected a "
                          f"multiple of {n}.")


def put_batch(x, mesh: Mesh):
    """This process's slice of a global batch -> a global array split along the data axis.

    With one process the slice is the whole batch. `None` passes through; pytrees are mapped.
    """
    sharding = batch_sharding(mesh)

    def put(a):
        if a is None:
            return None
        if jax.process_count() == 1:
            return jax.device_put(a, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(a))

    return jax.tree_util.tree_map(put, x)


def put_replicated(tree, mesh: Mesh):
    """Every array leaf of `tree` replicated over the mesh (other leaves untouched)."""
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.device_put(arrays, replicated(mesh)), static)


def gather(x) -> np.ndarray:
    """A (possibly sharded, possibly multi-process) array as one host numpy array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def is_main_process() -> bool:
    """Only process 0 writes checkpoints, metrics and figures."""
    return jax.process_index() == 0


def constrain(tree, sharding):
    """Every array of `tree` split along its leading axis by `sharding` (None: left as is).

    Used inside jitted sample/likelihood solves so the compiler partitions the batch over devices.
    """
    if sharding is None:
        return tree
    return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def agree(ok: bool, what: str) -> None:
    """All processes learn whether process 0 managed `what`; the others stop if it did not.

    Process 0 alone writes the work directory: when it refuses (say, an unwritable folder) the
    other processes must not train on and die later in a collective. Call it on every process;
    on process 0 a failure is left to its own error, on the others it raises SGMError.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    flag = int(multihost_utils.broadcast_one_to_all(np.int32(1 if ok else 0)))
    if not flag and not is_main_process():
        raise SGMError(f"process 0 could not {what} (see its error); stopping.")


def barrier(name: str) -> None:
    """Waits until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
