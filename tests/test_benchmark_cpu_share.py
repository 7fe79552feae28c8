"""benchmarks.common cpu_ticks / cpu_share / cpu_model: the machine and its load, as records carry them."""

from __future__ import annotations

import pytest

from benchmarks.common import cpu_model, cpu_share, cpu_ticks

# Two /proc/stat first lines ten seconds apart on a 2-vCPU guest: between them 1,000 ticks of
# user time, 100 system, 200 idle, 100 iowait and 600 stolen by the hypervisor (2,000 in all).
BEFORE = "cpu  5000 10 700 90000 300 0 20 4000 0 0\ncpu0 2500 5 350 45000 150 0 10 2000 0 0\n"
AFTER = "cpu  6000 10 800 90200 400 0 20 4600 0 0\ncpu0 3000 5 400 45100 200 0 10 2300 0 0\n"


def test_share_of_busy_idle_and_stolen_time():
    share = cpu_share(cpu_ticks(BEFORE), cpu_ticks(AFTER))
    assert share == {"busy": 0.55, "idle": 0.15, "steal": 0.3}


def test_old_kernel_line_without_steal_counts_none_stolen():
    before, after = cpu_ticks("cpu 10 0 10 100\n"), cpu_ticks("cpu 60 0 10 150\n")
    assert before["steal"] == 0 and cpu_share(before, after) == {"busy": 0.5, "idle": 0.5, "steal": 0.0}


@pytest.mark.parametrize("text", ["", "intr 1 2 3\n", "cpu 1 2\n", "cpu 1 2 x 4 5\n"])
def test_unexpected_text_gives_none_not_an_error(text):
    assert cpu_ticks(text) is None
    assert cpu_share(cpu_ticks(text), cpu_ticks(AFTER)) is None


def test_no_time_passed_gives_none():
    assert cpu_share(cpu_ticks(AFTER), cpu_ticks(AFTER)) is None


def test_this_machine_reads_where_proc_stat_exists():
    ticks = cpu_ticks()
    try:
        with open("/proc/stat") as f:
            expected = f.readline().startswith("cpu ")
    except OSError:
        expected = False
    assert (ticks is not None) == expected
    if ticks is not None:
        assert set(ticks) >= {"user", "idle", "steal"} and all(v >= 0 for v in ticks.values())


def test_the_processor_is_named_as_proc_cpuinfo_names_it():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    if not names:
        pytest.skip("this system has no model name in /proc/cpuinfo")
    assert cpu_model() == names[0]
