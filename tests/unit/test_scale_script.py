"""scripts/scale.py without Ray: reading /proc, finding and stopping a cluster's processes,
the growth figures of its last line, and its tables."""

from __future__ import annotations

import importlib.util
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("scale", REPO / "scripts" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


scale = _load_script()
M = scale.Measurement


def test_status_and_stat_of_this_process():
    status = Path("/proc/self/status").read_text()
    peak_kb = scale.status_kb(status, "VmHWM")
    # The kernel's rusage holds the same high-water mark (give or take its per-thread counters).
    assert peak_kb == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rel=0.05)
    assert scale.status_kb(status, "VmRSS") <= peak_kb
    assert scale.status_kb("Name:\tx\nState:\tZ (zombie)\n", "VmHWM") is None
    assert scale.stat_ppid(Path("/proc/self/stat").read_text()) == os.getppid()
    assert scale.stat_ppid("42 (ray::Train (a) b) S 7 42 42 0 -1") == 7  # a title with ") " in it


def test_spilled_mib_from_ray_memory_stats():
    stats = ("--- Aggregate object store stats across all nodes ---\n"
             "Plasma memory usage 12 MiB, 3 objects, 0.6% full, 0.6% needed\n"
             "Spilled 1536 MiB, 40 objects, avg write throughput 380 MiB/s\n"
             "Restored 512 MiB, 12 objects, avg read throughput 900 MiB/s\n")
    assert scale.spilled_mib(stats) == 1536
    assert scale.spilled_mib(stats.replace("Spilled", "Nothing")) == 0  # the line appears with the first spill


def test_part_count_and_rows_label():
    assert [scale.part_count(n) for n in (20_000, 1_000_000, 16_000_000)] == [2, 4, 64]
    assert [scale.rows_label(n) for n in (20_000, 1_000_000, 1_500_000, 16_000_000, 1_234_567)] == \
        ["20k", "1M", "1.5M", "16M", "1234567"]


def results(stream: bool = True) -> list:
    timings = {"ray_start_s": 1.0, "data_s": 4.0, "worker_start_s": 9.0, "ingest_s": None, "train_s": 5.0,
               "train_steps_s": 4.0, "test_s": 1.0}
    big = dict(timings, data_s=44.0, train_s=60.0, test_s=16.0)  # row-dependent: 10 s -> 120 s
    out = [M(1000, "train", "memory", 30.0, 500.0, [800.0, 780.0], 0.0, timings, None, 250.0, [600.0, 580.0]),
           M(16000, "train", "memory", 144.0, 520.0, [4000.0, 3900.0], 900.0, big, None, 260.0, [3000.0, 2900.0])]
    if stream:
        out += [M(1000, "train", "stream", 30.0, 500.0, [700.0, 690.0], 0.0, timings, None, 250.0, [300.0, 290.0]),
                M(16000, "train", "stream", 160.0, 510.0, [770.0, 760.0], 0.0, dict(big, train_s=76.0), None, 255.0,
                  [330.0, 320.0])]
    out += [M(1000, "evaluate", "-", 20.0, 400.0, driver_private_mb=200.0),
            M(16000, "evaluate", "-", 80.0, 560.0, driver_private_mb=210.0),
            M(1000, "predict", "-", 20.0, 300.0, driver_private_mb=150.0),
            M(16000, "predict", "-", 90.0, 330.0, driver_private_mb=155.0)]
    return out


def test_growth_of_private_memory():
    figures = scale.growth(results(), "private")  # (RssAnon: the object store's pages left out)
    assert figures["driver_rss_growth"] == pytest.approx(210 / 200)  # evaluate's
    assert figures["worker_rss_growth_stream"] == pytest.approx(330 / 300)
    assert figures["seconds_per_row_growth"] == scale.growth(results())["seconds_per_row_growth"]


def test_growth_of_the_largest_size_against_the_smallest():
    figures = scale.growth(results())
    assert figures["driver_rss_growth"] == pytest.approx(560 / 400)  # evaluate's, the largest ratio
    assert figures["worker_rss_growth_stream"] == pytest.approx(770 / 700)  # the larger worker of each
    # stream's row-dependent seconds: (44 + 76 + 16) / 16000 against (4 + 5 + 1) / 1000
    assert figures["seconds_per_row_growth"] == pytest.approx((136 / 16000) / (10 / 1000))
    assert scale.growth_line(figures) == "driver_rss_growth=1.40 worker_rss_growth_stream=1.10 " \
                                         "seconds_per_row_growth=0.85"


def test_growth_without_stream_mode_or_a_second_size():
    figures = scale.growth(results(stream=False))
    assert math.isnan(figures["worker_rss_growth_stream"])
    assert figures["seconds_per_row_growth"] == pytest.approx((120 / 16000) / (10 / 1000))  # memory mode's
    one_size = [r for r in results() if r.rows == 1000]
    assert scale.growth_line(scale.growth(one_size)) == \
        "driver_rss_growth=nan worker_rss_growth_stream=nan seconds_per_row_growth=nan"


def test_tables_and_doc():
    rows = results()
    table = scale.results_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert "| 16k | train | memory | 144.0 | 9.00e-03 | 520 | 4,000 / 3,900 | 260 | 3,000 / 2,900 | 900 |" in table
    assert "| 1k | evaluate | - | 20.0 | 2.00e-02 | 400 | - | 200 | - | 0 |" in table
    phases = scale.phases_table(rows).splitlines()
    assert len(phases) == 2 + 4  # the train runs only
    assert phases[0].startswith("| rows | mode | wall s | ray_start s | data s |")
    assert phases[3].endswith("| - | 60.0 | 4.0 | 16.0 | 120.0 | 7.50e-03 |")  # ingest_s None -> "-"
    assert "| evaluate | - | 1.40 | - | 1.05 | - | 0.25 |" in scale.ratios_table(rows)
    growth = scale.phase_growth_table(rows).splitlines()
    assert growth[0] == "| mode | data | ingest | train | train_steps | test | row-dependent |"
    assert growth[2] == "| memory | 0.69 | - | 0.75 | 0.06 | 1.00 | 0.75 |"  # (44 / 16k) / (4 / 1k), ...  # (80 / 16k) / (20 / 1k)
    doc = scale.render_doc(rows, command="python scripts/scale.py --rows 1000,16000", machine=["Machine: x"],
                           plot_name="scaling.png")
    assert "    python scripts/scale.py --rows 1000,16000" in doc
    assert "## Growth, 16k against 1k" in doc and "![time and memory against rows](scaling.png)" in doc
    assert scale.growth_line(scale.growth(rows)) in doc and scale.growth_line(scale.growth(rows, "private")) in doc


def test_a_failed_command_is_shown_and_left_out_of_the_growth():
    rows = results()
    rows[-1].error = "exit 1"  # predict at 16k
    rows[0].error = "ran past --timeout 3600 s"  # train memory at 1k
    table = scale.results_table(rows)
    assert "| 16k | predict | - | failed (exit 1) after 90.0 | - | 330 | - | 155 | - | 0 |" in table
    assert [(command, mode) for command, mode, *_ in scale.ratios(rows)] == [("train", "stream"), ("evaluate", "-")]
    assert scale.growth(rows)["driver_rss_growth"] == pytest.approx(560 / 400)


def _wait(condition, what: str, deadline_s: float = 30.0):
    deadline = time.time() + deadline_s
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_cluster_processes_finds_training_workers_and_stops_only_its_own(tmp_path):
    """A stand-in cluster: a root process that names the temp dir, and its child titled like
    a Ray Train worker holding 200 MB. The poll finds the worker's peak, and `stop` ends the
    two of them but not a process outside the tree."""
    marker = str(tmp_path)
    child = f'exec -a "ray::{scale.TRAIN_WORKER}.fake" {sys.executable} -c "b = b\'x\' * (200 << 20); ' \
            'import time; time.sleep(600)"'
    root = subprocess.Popen(["bash", "-c", f"({child}) & wait; : {marker}"])
    outsider = subprocess.Popen(["sleep", "600"])
    try:
        processes = scale.ClusterProcesses(marker)

        def worker_seen() -> bool:
            processes.polls = 0  # a full scan every time: the child may be new
            processes.poll()
            return any(peak >= 200 for peak in processes.workers.values()) and \
                any(own >= 200 for own in processes.private.values())  # its own bytes: private

        _wait(worker_seen, "the stand-in worker's 200 MB peak was not seen")
        assert root.pid in processes.titles
        assert processes.take_workers() and not processes.workers
        assert processes.take_private() and not processes.private
        processes.stop()
        _wait(lambda: root.poll() is not None, "the root was not stopped")
        assert not processes.scan()
        assert outsider.poll() is None
    finally:
        for proc in (root, outsider):
            proc.kill()
            proc.wait()
