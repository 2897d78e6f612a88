"""Where this process stands in the job: distribution strategy, SLURM resolution, precision.

- ``TF_CONFIG`` set, or an ``srun`` step of several tasks: MultiWorkerMirroredStrategy
  (one worker per task, addresses from SLURM).
- GPUs visible: MirroredStrategy over them (``gpus`` of them when given).
- ``cpu_replicas`` > 1 on a machine without GPUs: MirroredStrategy over that many
  logical CPU devices (to test the multi-replica code path on a laptop or in CI).
- Otherwise the default strategy.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
from typing import Any, Mapping


@dataclasses.dataclass
class Cluster:
    """The strategy and this process's place in it."""

    strategy: Any
    name: str
    replicas: int
    workers: int
    worker_index: int
    is_chief: bool
    devices: list[str]
    threads_note: str = ""  # a warning from pin_inter_op_threads for the console, or ""

    @property
    def local_replicas(self) -> int:
        """Replicas driven by this worker."""
        return self.replicas // max(self.workers, 1)


#: Run tags from the SLURM environment: tag name -> variable.
SLURM_TAG_VARIABLES = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID",
                       "array_task_id": "SLURM_ARRAY_TASK_ID", "job_nodelist": "SLURM_JOB_NODELIST",
                       "restart_count": "SLURM_RESTART_COUNT"}


def slurm_facts(environ: Mapping[str, str]) -> dict[str, str]:
    """The SLURM job's id, array job and task id, node list and requeue count, from ``environ``.

    Only the variables that are set (none outside SLURM). ``restart_count`` is 0 on a job's first
    start when the job runs under SLURM (SLURM sets ``SLURM_RESTART_COUNT`` only after a requeue).
    """
    facts = {name: environ[variable].strip() for name, variable in SLURM_TAG_VARIABLES.items()
             if environ.get(variable, "").strip()}
    if "job_id" in facts:
        facts.setdefault("restart_count", "0")
    return facts


def slurm_task_count() -> int:
    """Tasks of the current ``srun`` step (1 outside SLURM)."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))


def visible_gpu_count() -> int:
    """GPUs this process may use, counted without starting CUDA.

    ``CUDA_VISIBLE_DEVICES`` when set (its entries that are indices or GPU/MIG
    UUIDs), else the ``GPU`` lines of ``nvidia-smi --list-gpus``, else 0 (no
    driver: a CPU node).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [entry.strip() for entry in visible.split(",")]
        return sum(entry.isdigit() or entry.startswith(("GPU-", "MIG-")) for entry in entries)
    try:
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def slurm_cluster_resolver(port_base: int):
    """The workers of this ``srun`` step: one per task, on port ``port_base`` + its index on its node.

    Each worker uses the GPUs visible to it (``CUDA_VISIBLE_DEVICES`` as SLURM
    set it; none on a CPU node), so tasks sharing a node need their own GPUs
    (``--gpus-per-task``). TensorFlow's SlurmClusterResolver only supplies the
    addresses: its GPU handling calls nvidia-smi (absent on CPU nodes) and
    cannot give a task zero GPUs.
    """
    import tensorflow as tf

    tasks = slurm_task_count()
    addresses = tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=port_base, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        addresses.cluster_spec(), task_type=addresses.task_type, task_id=addresses.task_id,
        num_accelerators={"GPU": visible_gpu_count()}, rpc_layer="grpc")


def split_cpu(replicas: int) -> None:
    """Expose ``replicas`` logical CPU devices; must run before TensorFlow initialises its devices."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as error:
        raise RuntimeError(f"cannot split the CPU into {replicas} devices after TensorFlow started: {error}") from None


#: Environment variable TensorFlow reads for its inter-op thread count; when set, it is left to the user.
INTER_OP_VARIABLE = "TF_NUM_INTEROP_THREADS"


def pin_inter_op_threads(environ: Mapping[str, str] = os.environ) -> str:
    """On a machine without GPUs, let TensorFlow run one op at a time (each op still uses every core).

    With several inter-op threads, ops that run side by side on a CPU share
    the intra-op pool, and some (the batch-normalisation gradients measured)
    then sum in an order that depends on timing: the same seed gave other
    weights after a few steps whenever the machine was busy, and a small CNN
    trained on BR35H ended 0.04 AUC apart on NAV. One inter-op thread makes
    training on a CPU repeat bit for bit. Nothing is changed where GPUs are
    visible (ops are launched there, not summed), where ``TF_NUM_INTEROP_THREADS``
    is set, or once TensorFlow has started (then the note says so).

    Returns:
        A warning for the console when the threads could not be pinned; "" otherwise.
    """
    import tensorflow as tf

    if environ.get(INTER_OP_VARIABLE, "").strip() or visible_gpu_count() > 0:
        return ""
    if tf.config.threading.get_inter_op_parallelism_threads() == 1:
        return ""
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        return ("note: TensorFlow started before the inter-op threads could be set to 1; on a busy CPU "
                "the same seed may not repeat bit for bit")
    return ""


def choose_strategy(gpus: int = -1, cpu_replicas: int = 1) -> Cluster:
    """MultiWorkerMirrored with TF_CONFIG or several SLURM tasks, Mirrored on GPUs or split CPUs, else default.

    First pins the inter-op threads on a machine without GPUs (:func:`pin_inter_op_threads`).
    """
    import tensorflow as tf

    threads_note = pin_inter_op_threads()

    in_slurm_step = "SLURM_STEP_ID" in os.environ and "SLURM_PROCID" in os.environ
    if "TF_CONFIG" in os.environ or (in_slurm_step and slurm_task_count() > 1):
        resolver = None
        if "TF_CONFIG" not in os.environ:
            resolver = slurm_cluster_resolver(int(os.environ.get("BRAINMRI_PORT_BASE", "8888")))
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                             communication_options=options)
        resolver = strategy.cluster_resolver
        spec = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
        is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in spec)
        workers = sum(len(v) for k, v in spec.items() if k in ("chief", "worker"))
        return Cluster(strategy, "MultiWorkerMirroredStrategy", strategy.num_replicas_in_sync, workers,
                       task_id + (1 if task_type == "worker" and "chief" in spec else 0), is_chief,
                       [d.name for d in tf.config.list_logical_devices()], threads_note)
    physical = tf.config.list_physical_devices("GPU")
    count = len(physical) if gpus < 0 else min(gpus, len(physical))
    if count >= 1:
        strategy = tf.distribute.MirroredStrategy(devices=[f"/gpu:{i}" for i in range(count)])
        name = "MirroredStrategy"
    elif cpu_replicas > 1:
        split_cpu(cpu_replicas)
        strategy = tf.distribute.MirroredStrategy(devices=[f"/cpu:{i}" for i in range(cpu_replicas)],
                                                  cross_device_ops=tf.distribute.ReductionToOneDevice())
        name = "MirroredStrategy"
    else:
        strategy = tf.distribute.get_strategy()
        name = "default"
    return Cluster(strategy, name, strategy.num_replicas_in_sync, 1, 0, True,
                   [d.name for d in tf.config.list_logical_devices()], threads_note)


@dataclasses.dataclass(frozen=True)
class Precision:
    """Mixed precision and XLA as decided for this machine."""

    mixed: bool
    xla: bool

    def apply(self) -> None:
        """Set the Keras global dtype policy (before the model is built)."""
        import keras

        keras.mixed_precision.set_global_policy("mixed_float16" if self.mixed else "float32")


def choose_precision(mixed_precision: str = "auto", jit_compile: str = "auto") -> Precision:
    """``auto``: on with GPUs, off on CPU; ``on`` / ``off`` force it."""
    import tensorflow as tf

    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    return Precision(mixed=mixed_precision == "on" or (mixed_precision == "auto" and on_gpu),
                     xla=jit_compile == "on" or (jit_compile == "auto" and on_gpu))


def system_facts(cluster: Cluster) -> dict[str, str]:
    """Versions, platform and devices, as MLflow tags."""
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "strategy": cluster.name, "replicas": str(cluster.replicas),
            "workers": str(cluster.workers), "devices": ",".join(cluster.devices),
            "gpus": str(len(tf.config.list_physical_devices("GPU"))),
            "inter_op_threads": str(tf.config.threading.get_inter_op_parallelism_threads())}
