"""``--workers 0``: as many workers as the CPUs the cgroup allows, else the affinity, else the CPU count."""

import pytest

from flashstock.server._cpus import CpuBudget, cpu_budget, read_cpu_budget


@pytest.mark.parametrize(
    "kwargs, workers, source",
    [
        # cgroup v2 cpu.max: "<quota> <period>", or "max <period>" (no limit)
        ({"cpu_max": "200000 100000\n", "affinity": 16}, 2, "cgroup v2"),
        ({"cpu_max": "150000 100000\n", "affinity": 16}, 2, "cgroup v2"),  # 1.5 CPUs: the ceiling
        ({"cpu_max": "50000 100000\n", "affinity": 16}, 1, "cgroup v2"),  # half a CPU: at least one
        ({"cpu_max": "1000 100000\n", "affinity": 16}, 1, "cgroup v2"),
        ({"cpu_max": "max 100000\n", "affinity": 16}, 16, "sched_getaffinity"),
        ({"cpu_max": "max 100000\n", "cfs_quota_us": "300000", "cfs_period_us": "100000"}, 3, "cgroup v1"),
        ({"cpu_max": "garbage", "affinity": 4}, 4, "sched_getaffinity"),
        # cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us, -1 = no limit
        ({"cfs_quota_us": "400000\n", "cfs_period_us": "100000\n", "affinity": 16}, 4, "cgroup v1"),
        ({"cfs_quota_us": "250000\n", "cfs_period_us": "100000\n", "affinity": 16}, 3, "cgroup v1"),
        ({"cfs_quota_us": "-1\n", "cfs_period_us": "100000\n", "affinity": 8}, 8, "sched_getaffinity"),
        ({"cfs_quota_us": "400000\n", "cfs_period_us": None, "affinity": 8}, 8, "sched_getaffinity"),
        ({"cfs_quota_us": "400000\n", "cfs_period_us": "0\n", "affinity": 8}, 8, "sched_getaffinity"),
        # no cgroup limit: the CPUs the process may run on, else the count, else 1
        ({"affinity": 3, "cpu_count": 64}, 3, "sched_getaffinity"),
        ({"affinity": None, "cpu_count": 64}, 64, "os.cpu_count"),
        ({}, 1, "os.cpu_count"),
    ],
)
def test_the_budget_of_each_shape(kwargs, workers, source):
    budget = cpu_budget(**kwargs)
    assert budget.workers == workers
    assert budget.source.startswith(source)


def test_the_source_names_the_quota():
    assert cpu_budget(cpu_max="150000 100000\n") == CpuBudget(2, "cgroup v2 cpu.max 150000 100000")


def test_the_files_are_read_from_the_cgroup_folder(tmp_path):
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert read_cpu_budget(tmp_path).workers == 3
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("500000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert read_cpu_budget(tmp_path) == CpuBudget(5, "cgroup v1 cpu.cfs_quota_us 500000 / 100000")


def test_without_cgroup_files_the_affinity_counts(tmp_path):
    import os

    assert read_cpu_budget(tmp_path) == CpuBudget(len(os.sched_getaffinity(0)), "sched_getaffinity")
