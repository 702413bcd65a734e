"""Every metric the collectors emit: its help text and the levels it appears at.

Prometheus names are ``onebox_<name>``; units are in the name (``_bytes``, ``_seconds``,
``_ratio`` for 0-1 fractions, ``_per_second`` for rates). Nothing outside this table is stored or
exported, so the Grafana dashboard and the query API can rely on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from onebox.monitor.samples import CLUSTER, COMPONENT, NODE, TASK

PREFIX = "onebox_"


@dataclass(frozen=True)
class MetricSpec:
    help: str
    levels: tuple[str, ...]


def _m(help_: str, *levels: str) -> MetricSpec:
    return MetricSpec(help_, levels)


C, N, K, T = COMPONENT, NODE, CLUSTER, TASK

METRICS: dict[str, MetricSpec] = {
    # CPU and memory
    "cpu_usage_ratio": _m(
        "Busy share of CPU time: per core (component), whole node, whole cluster.", C, N, K
    ),
    "cpu_count": _m("Logical CPUs.", N, K),
    "load_average_1m": _m("One-minute load average.", N),
    "memory_total_bytes": _m("Physical memory.", C, N, K),
    "memory_used_bytes": _m("Memory in use (total minus available).", C, N, K),
    "memory_available_bytes": _m("Memory available to new processes without swapping.", C),
    "memory_usage_ratio": _m("Used share of physical memory.", C, N, K),
    "swap_used_bytes": _m("Swap in use.", C),
    # file systems and block devices
    "fs_total_bytes": _m("Size of a mounted file system.", C),
    "fs_used_bytes": _m("Used bytes of a mounted file system.", C),
    "fs_usage_ratio": _m("Used share of a file system (node: the fullest one).", C, N),
    "disk_read_bytes_per_second": _m("Bytes read from a block device (node: all devices).", C, N),
    "disk_write_bytes_per_second": _m("Bytes written to a block device (node: all devices).", C, N),
    "disk_read_ops_per_second": _m("Read operations on a block device.", C),
    "disk_write_ops_per_second": _m("Write operations on a block device.", C),
    # network
    "net_receive_bytes_per_second": _m("Bytes received by a network interface (node: all).", C, N),
    "net_transmit_bytes_per_second": _m("Bytes sent by a network interface (node: all).", C, N),
    "net_errors_per_second": _m("Receive and transmit errors plus drops of an interface.", C),
    # GPUs (NVML)
    "gpu_count": _m("GPUs NVML sees.", N, K),
    "gpu_utilization_ratio": _m("Share of time a kernel ran on the GPU (node, cluster: mean).", C, N, K),
    "gpu_memory_utilization_ratio": _m("Share of time GPU memory was read or written.", C),
    "gpu_memory_total_bytes": _m("GPU memory (node, cluster: sum).", C, N, K),
    "gpu_memory_used_bytes": _m("GPU memory in use (node, cluster: sum).", C, N, K),
    "gpu_temperature_celsius": _m("GPU core temperature (node: the hottest GPU).", C, N),
    "gpu_power_watts": _m("GPU power draw (node: sum).", C, N),
    "gpu_power_limit_watts": _m("GPU power limit being enforced.", C),
    "gpu_sm_clock_hertz": _m("GPU streaming-multiprocessor clock.", C),
    "gpu_memory_clock_hertz": _m("GPU memory clock.", C),
    "gpu_ecc_corrected_errors": _m("Corrected ECC errors since the driver loaded (volatile).", C),
    "gpu_ecc_uncorrected_errors": _m("Uncorrected ECC errors since the driver loaded (node: sum).", C, N),
    "gpu_pcie_receive_bytes_per_second": _m("PCIe traffic into the GPU.", C),
    "gpu_pcie_transmit_bytes_per_second": _m("PCIe traffic out of the GPU.", C),
    "gpu_throttle_reasons": _m("NVML clock-throttle reason bit mask (0: not throttled).", C),
    "gpu_throttled": _m("1 when clocks are held down by power, heat or a slowdown (not idle).", C, N),
    # node
    "node_up": _m("1 while the node's heartbeat is fresh.", N),
    "node_healthy": _m("1 when the node passes its health checks.", N),
    "node_heartbeat_timestamp_seconds": _m("Unix time of the node's latest heartbeat.", N),
    "node_uptime_seconds": _m("Seconds since the node booted.", N),
    # cluster
    "cluster_nodes": _m("Nodes known to the cluster.", K),
    "cluster_nodes_up": _m("Nodes whose heartbeat is fresh.", K),
    "cluster_jobs_running": _m("Jobs running now.", K),
    "cluster_deployments": _m("Deployments served now.", K),
    # task: jobs
    "job_loss": _m("Latest training loss a job reported.", T),
    "job_learning_rate": _m("Latest learning rate.", T),
    "job_grad_norm": _m("Latest gradient norm (before clipping).", T),
    "job_tokens_per_second": _m("Training throughput.", T),
    "job_step_time_seconds": _m("Wall time of the latest optimizer step.", T),
    "job_step": _m("Units done (steps for training jobs).", T),
    "job_progress_ratio": _m("Share of the job done.", T),
    "job_eta_seconds": _m("Estimated seconds to finish, from this attempt's rate.", T),
    "job_heartbeat_age_seconds": _m("Seconds since the job's worker last reported.", T),
    # task: deployments
    "deployment_requests_per_second": _m("Requests the gateway finished for the deployment.", T),
    "deployment_errors_per_second": _m("Requests answered with a 5xx status.", T),
    "deployment_time_to_first_token_seconds": _m("Mean time to first token over the interval.", T),
    "deployment_time_per_output_token_seconds": _m("Mean time per output token over the interval.", T),
    "deployment_output_tokens_per_second": _m("Tokens generated by the deployment's workers.", T),
    "deployment_running": _m("Requests decoding now.", T),
    "deployment_queue": _m("Requests waiting for a slot.", T),
    "deployment_kv_usage_ratio": _m("Share of the KV cache in use (mean over replicas).", T),
    "deployment_replicas_ready": _m("Ready replicas.", T),
    # task: processes of a job or deployment
    "task_processes": _m("Processes of the task (workers and their children).", T),
    "task_cpu_cores": _m("CPU cores the task's processes use (1.0 = one core busy).", T),
    "task_memory_rss_bytes": _m("Resident memory of the task's processes.", T),
    "task_gpu_memory_bytes": _m("GPU memory the task's processes hold.", T),
}


def prometheus_name(metric: str) -> str:
    return PREFIX + metric
