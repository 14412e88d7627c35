"""How the emulator holds a big job: 10,000 tasks through azure-batch's create_tasks, then filtered lists.

    .venv/bin/python benchmarks/emulator_scale.py [--tasks 10000] [--page 1000]

Measures, through the real SDK over HTTP on loopback:
  - creation rate of `create_tasks` (the SDK's chunks of 100, its default concurrency);
  - latency of each page of `list_tasks(filter="state eq 'active'", select=["id", "state"])`;
  - time from creation to 'running' for a trivial task on an idle node (service side: startTime -
    creationTime; client side: until a 0.05 s poll sees it running);
  - peak RSS of this process, which holds both the emulator and the client.
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime

from azure.batch import models

from snakemake_executor_saje.emulator import Emulator

IMAGE = models.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2404", version="latest")


def pool(pool_id: str, nodes: int) -> models.BatchPoolCreateOptions:
    return models.BatchPoolCreateOptions(
        id=pool_id, vm_size="Standard_D2s_v3", target_dedicated_nodes=nodes,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04"))


def parse(text) -> datetime:
    return text if isinstance(text, datetime) else datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--latency-samples", type=int, default=20)
    args = parser.parse_args()

    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="saje-bench-") as tmp, \
            Emulator(tmp, node_boot_seconds=1.0) as emu:  # real time: the latencies below are service timestamps
        client = emu.client()
        # A pool with no nodes: the tasks stay active, as a big submission does before autoscale.
        client.create_pool(pool("parked", 0))
        client.create_job(models.BatchJobCreateOptions(id="big", pool_info=models.BatchPoolInfo(pool_id="parked")))
        tasks = [models.BatchTaskCreateOptions(id=f"task-{i:05d}", command_line="/bin/true",
                                               environment_settings=[models.EnvironmentSetting(name="I", value=str(i))])
                 for i in range(args.tasks)]
        start = time.perf_counter()
        result = client.create_tasks("big", tasks)
        elapsed = time.perf_counter() - start
        ok = sum(1 for r in result.result_values if r.status == "success")
        assert ok == args.tasks, f"only {ok} of {args.tasks} tasks created"
        rows.append(("create_tasks", f"{args.tasks} tasks in {elapsed:.2f} s = {args.tasks / elapsed:,.0f} tasks/s"))

        latencies, total = [], 0
        pages = client.list_tasks("big", filter="state eq 'active'", select=["id", "state"],
                                  max_results=args.page).by_page()
        while True:
            t0 = time.perf_counter()
            try:
                page = list(next(pages))
            except StopIteration:
                break
            latencies.append(time.perf_counter() - t0)
            total += len(page)
        assert total == args.tasks, total
        rows.append((f"list page of {args.page} (filter+select)",
                     f"{len(latencies)} pages: median {statistics.median(latencies) * 1000:.0f} ms, "
                     f"max {max(latencies) * 1000:.0f} ms"))
        t0 = time.perf_counter()
        counts = client.get_job_task_counts("big")
        rows.append(("task counts of the job", f"{(time.perf_counter() - t0) * 1000:.0f} ms "
                                               f"(active={counts.task_counts.active})"))

        # Creation -> running for a trivial task on an idle node.
        client.create_pool(pool("warm", 1))
        while not any(n.state == "idle" for n in client.list_nodes("warm")):
            time.sleep(0.05)
        client.create_job(models.BatchJobCreateOptions(id="quick", pool_info=models.BatchPoolInfo(pool_id="warm")))
        service_side, client_side = [], []
        for i in range(args.latency_samples):
            t0 = time.perf_counter()
            client.create_task("quick", models.BatchTaskCreateOptions(id=f"q{i}", command_line="/bin/true"))
            while (task := client.get_task("quick", f"q{i}")).state not in ("running", "completed"):
                time.sleep(0.05)
            client_side.append(time.perf_counter() - t0)
            while (task := client.get_task("quick", f"q{i}")).state != "completed":
                time.sleep(0.05)
            service_side.append((parse(task.execution_info.start_time) - parse(task.creation_time)).total_seconds())
        rows.append(("creation -> running (service times)",
                     f"median {statistics.median(service_side) * 1000:.0f} ms, max {max(service_side) * 1000:.0f} ms"))
        rows.append(("creation -> seen running (client, 50 ms poll)",
                     f"median {statistics.median(client_side) * 1000:.0f} ms, max {max(client_side) * 1000:.0f} ms"))
        client.close()

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(("peak RSS (emulator + client, one process)", f"{peak_mib:.0f} MiB"))

    import os

    print(f"SAJE emulator scale benchmark - {datetime.now().date()} - {platform.machine()} "
          f"{os.cpu_count()} cores - Python {platform.python_version()}")
    width = max(len(name) for name, _ in rows)
    print(f"{'measure'.ljust(width)} | result")
    print(f"{'-' * width}-+-{'-' * 50}")
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
