"""Many processes: start JAX's runtime in each, or start N processes on this machine.

:func:`initialize` calls ``jax.distributed.initialize`` from arguments,
funcnet's environment variables or a cluster's (SLURM, Open MPI, Cloud TPU,
Kubernetes: :func:`detect_cluster`); :func:`launch` starts N local processes
(tests, a laptop) that fail loudly instead of hanging when one of them dies.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax

__all__ = [
    "ProcessResult",
    "detect_cluster",
    "free_port",
    "initialize",
    "is_main_process",
    "launch",
]

_SLURM = ("SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def _count(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, "1"))
    except ValueError:
        raise ValueError(
            f"detect_cluster: environment variable {name}={environ[name]!r} is not an integer."
        ) from None


def _slurm(environ: Mapping[str, str]) -> str | None:
    tasks = _count(environ, "SLURM_NTASKS")
    missing = [name for name in _SLURM if name not in environ]
    if tasks <= 1:
        return None  # one task (or a batch script outside a step): one process
    if missing:
        raise ValueError(
            f"detect_cluster: a SLURM job of {tasks} tasks (SLURM_JOB_ID="
            f"{environ['SLURM_JOB_ID']}), but {', '.join(missing)} not set: this is not a "
            "job step. Start one process per task with `srun python train.py` (srun sets them)."
        )
    return "slurm"


def _ompi(environ: Mapping[str, str]) -> str | None:
    size = _count(environ, "OMPI_COMM_WORLD_SIZE")
    if size <= 1:
        return None
    if "OMPI_MCA_orte_hnp_uri" not in environ:
        raise ValueError(
            f"detect_cluster: an Open MPI job of {size} processes, but OMPI_MCA_orte_hnp_uri is "
            "not set (Open MPI >= 5 launches through PMIx, which jax does not detect). Set "
            "JAX_COORDINATOR_ADDRESS=<host of rank 0>:<port>, JAX_NUM_PROCESSES="
            "$OMPI_COMM_WORLD_SIZE and JAX_PROCESS_ID=$OMPI_COMM_WORLD_RANK instead."
        )
    return "ompi"


def _tpu(environ: Mapping[str, str]) -> str | None:
    hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
    return "tpu" if len([h for h in hosts.split(",") if h.strip()]) > 1 else None


def _k8s(environ: Mapping[str, str]) -> str | None:
    if "KUBERNETES_SERVICE_HOST" not in environ or "JOB_COMPLETION_INDEX" not in environ:
        return None
    import importlib.util

    if importlib.util.find_spec("kubernetes") is None:
        raise ValueError(
            "detect_cluster: an indexed Kubernetes job (KUBERNETES_SERVICE_HOST and "
            "JOB_COMPLETION_INDEX are set), but the `kubernetes` package that jax needs to find "
            'the other pods is missing: `pip install "jax[k8s]"`, or set JAX_COORDINATOR_ADDRESS, '
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID."
        )
    return "k8s"


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The multi-process cluster this process was started in, from its environment variables.

    What ``jax.distributed.initialize()`` detects by itself: ``"slurm"`` (a
    job step of several tasks: ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``,
    ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``), ``"ompi"`` (Open
    MPI's ``mpirun``: ``OMPI_COMM_WORLD_SIZE`` > 1 and
    ``OMPI_MCA_orte_hnp_uri``), ``"tpu"`` (a multi-host TPU slice:
    ``TPU_WORKER_HOSTNAMES`` or ``TPU_PROCESS_ADDRESSES`` with several hosts)
    and ``"k8s"`` (an indexed Kubernetes job; needs ``pip install
    "jax[k8s]"``). A single task or process gives ``None``.

    Args:
        environ: the variables to read (default: ``os.environ``).

    Returns:
        The cluster's name, or ``None``.

    Raises:
        ValueError: when a cluster is there but incomplete (e.g. a SLURM job
            of several tasks run outside ``srun``), saying what is missing.

    Examples:
        >>> detect_cluster({})
        >>> env = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
        ...        "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
        >>> detect_cluster(env)
        'slurm'
    """
    environ = os.environ if environ is None else environ
    if "SLURM_JOB_ID" in environ:
        found = _slurm(environ)
        if found:
            return found
    for probe in (_ompi, _tpu, _k8s):
        found = probe(environ)
        if found:
            return found
    return None


def _env_int(name: str, value, where: str) -> int | None:
    if value is not None:
        return value
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"{where}: environment variable {name}={raw!r} is not an integer; set it to a number."
        ) from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    coordinator_bind_address: str | None = None,
    cpu_devices: int | None = None,
    initialization_timeout: int = 300,
    heartbeat_timeout_seconds: int = 100,
    cluster: str | None = None,
) -> tuple[int, int]:
    """Start JAX's multi-process runtime (``jax.distributed.initialize``); ``(process_id, count)``.

    Each argument left None is read from the environment:
    ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` and ``JAX_COORDINATOR_BIND_ADDRESS``
    (JAX itself reads ``JAX_NUM_CPU_DEVICES`` when it is imported). When none
    of these is given, a cluster's own variables are used, as
    ``jax.distributed.initialize()`` detects them (:func:`detect_cluster`:
    SLURM under ``srun``, Open MPI's ``mpirun``, multi-host TPU slices,
    indexed Kubernetes jobs): there the script needs no argument at all.
    Without any of them (or with one process) nothing is started and the
    program runs as one process, so the same script serves both. Call it
    first, before any other JAX operation. CPU processes use the gloo
    collectives.

    Args:
        coordinator_address: ``"host:port"`` of process 0's coordinator.
        num_processes: how many processes take part.
        process_id: this process's index in ``[0, num_processes)``.
        coordinator_bind_address: the address process 0 listens on (e.g.
            ``"127.0.0.1:PORT"`` to stay on the loopback interface).
        cpu_devices: virtual CPU devices for this process (CPU only).
        initialization_timeout: seconds to wait for every process to join.
        heartbeat_timeout_seconds: seconds after which a silent process is
            declared dead (and the others stop with an error).
        cluster: which of JAX's cluster detections to use when nothing else
            is given (``"slurm"``, ``"ompi"``, ``"mpi4py"``, ``"gcetpu"``,
            ``"gketpu"``, ... as ``jax.distributed.initialize``'s
            ``cluster_detection_method``), e.g. ``"mpi4py"``, which JAX only
            uses when asked, or ``"gcetpu"`` (found through the TPU VM's
            metadata server, not its environment). Default: by the
            environment variables (:func:`detect_cluster`).

    Returns:
        ``(jax.process_index(), jax.process_count())``.

    Raises:
        ValueError: for an incomplete or inconsistent setting (naming what
            is missing), or ``cpu_devices`` asked for after JAX started.
        RuntimeError: when a detected cluster's setup fails in JAX (the
            cluster is named).

    Examples:
        >>> initialize()  # nothing configured: one process
        (0, 1)
    """
    where = "initialize"
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    coordinator_bind_address = (
        coordinator_bind_address or os.environ.get("JAX_COORDINATOR_BIND_ADDRESS") or None
    )
    num_processes = _env_int("JAX_NUM_PROCESSES", num_processes, where)
    process_id = _env_int("JAX_PROCESS_ID", process_id, where)
    if cpu_devices is not None and cpu_devices != jax.config.jax_num_cpu_devices:
        if cpu_devices < 1:
            raise ValueError(f"{where}: `cpu_devices` must be >= 1, got {cpu_devices}.")
        try:
            jax.config.update("jax_num_cpu_devices", int(cpu_devices))
        except RuntimeError as err:
            raise ValueError(
                f"{where}: `cpu_devices={cpu_devices}` must be set before JAX starts ({err}); "
                "call `initialize` first in the program."
            ) from None
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    if num_processes is None and coordinator_address is None:
        found = cluster or detect_cluster()
        if found is None:
            return 0, 1
        return _initialize_cluster(
            found, cluster, process_id, coordinator_bind_address, initialization_timeout,
            heartbeat_timeout_seconds,
        )  # fmt: skip
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"{where}: `num_processes` must be >= 1, got {num_processes}.")
    if num_processes == 1:
        return 0, 1
    missing = [
        name
        for name, value in (
            ("coordinator_address (JAX_COORDINATOR_ADDRESS)", coordinator_address),
            ("num_processes (JAX_NUM_PROCESSES)", num_processes),
            ("process_id (JAX_PROCESS_ID)", process_id),
        )
        if value is None
    ]
    if missing:
        raise ValueError(
            f"{where}: several processes need a coordinator address, a process count and a "
            f"process id; missing {', '.join(missing)}. Pass them or set the environment "
            "variables."
        )
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"{where}: `process_id={process_id}` must be in [0, {num_processes}) for "
            f"`num_processes={num_processes}`."
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        coordinator_bind_address=coordinator_bind_address,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
    return jax.process_index(), jax.process_count()


def _initialize_cluster(
    found: str, method, process_id, bind_address, initialization_timeout, heartbeat
) -> tuple[int, int]:
    """``jax.distributed.initialize`` left to detect the cluster ``found`` (or ``method``)."""
    try:
        jax.distributed.initialize(
            process_id=process_id,
            cluster_detection_method=method,
            coordinator_bind_address=bind_address,
            initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=heartbeat,
        )
    except (RuntimeError, ValueError) as err:
        raise RuntimeError(
            f"initialize: this looks like a {found!r} cluster, but jax.distributed.initialize "
            f"could not set it up ({err}). Set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
            "JAX_PROCESS_ID (or pass them) to start it by hand."
        ) from err
    return jax.process_index(), jax.process_count()


def is_main_process() -> bool:
    """True in process 0 (the one that writes checkpoints, logs and files).

    Examples:
        >>> is_main_process()
        True
    """
    return jax.process_index() == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (for a local coordinator).

    Examples:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ProcessResult(NamedTuple):
    """One process of :func:`launch`: its id, exit code and output (stdout and stderr)."""

    process_id: int
    returncode: int
    output: str


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def launch(
    argv: Sequence[str],
    num_processes: int = 2,
    *,
    cpu_devices: int | None = None,
    timeout: float = 300.0,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> list[ProcessResult]:
    """Run ``argv`` as ``num_processes`` processes on this machine, joined by ``127.0.0.1``.

    Each process gets ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_COORDINATOR_BIND_ADDRESS`` (``127.0.0.1:port``, a free port by
    default), ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` and, with
    ``cpu_devices``, ``JAX_NUM_CPU_DEVICES``, so a script that calls
    :func:`initialize` first joins the others. For tests and trying
    multi-process code on one machine; on a cluster start one process per host
    with the same variables.

    When a process exits with an error the others are stopped (only the
    processes started here) and a ``RuntimeError`` names it and shows the end
    of its output, instead of the others waiting for it until JAX's own
    timeouts.

    Args:
        argv: the command, e.g. ``[sys.executable, "train.py"]``.
        num_processes: how many processes.
        cpu_devices: virtual CPU devices per process.
        timeout: seconds for the whole run.
        port: the coordinator's port (default: a free one).
        env: extra environment variables.

    Returns:
        One :class:`ProcessResult` per process, in process order, all with
        exit code 0.

    Raises:
        RuntimeError: when a process fails (the others are stopped).
        TimeoutError: when the run takes longer than ``timeout`` (all stopped).
        ValueError: for ``num_processes < 1`` or an empty ``argv``.
    """
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"launch: `num_processes` must be an int >= 1, got {num_processes!r}.")
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("launch: `argv` is empty; pass a command, e.g. [sys.executable, 'x.py'].")
    port = free_port() if port is None else int(port)
    base = dict(os.environ)
    base.update(env or {})
    address = f"127.0.0.1:{port}"
    base.update(
        JAX_COORDINATOR_ADDRESS=address,
        JAX_COORDINATOR_BIND_ADDRESS=address,
        JAX_NUM_PROCESSES=str(num_processes),
    )
    if cpu_devices is not None:
        base["JAX_NUM_CPU_DEVICES"] = str(int(cpu_devices))
    logs, procs = [], []
    try:
        for i in range(num_processes):
            log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    argv,
                    env={**base, "JAX_PROCESS_ID": str(i)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + timeout
        failed = None
        while True:
            codes = [p.poll() for p in procs]
            failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is not None or all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for p in procs:  # only the processes started above
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read().decode(errors="replace"))
        log.close()
    results = [ProcessResult(i, p.returncode, o) for i, (p, o) in enumerate(zip(procs, outputs))]
    if failed is not None:
        r = results[failed]
        raise RuntimeError(
            f"launch: process {failed} of {num_processes} exited with code {r.returncode}; "
            f"stopped the other processes. Its output ended with:\n{_tail(r.output)}"
        )
    if any(r.returncode != 0 for r in results):
        raise TimeoutError(
            f"launch: the {num_processes} processes did not finish within {timeout} s; stopped "
            f"them. Process 0's output ended with:\n{_tail(results[0].output)}"
        )
    return results
