"""Reading which process started which from /proc."""

from __future__ import annotations

import os
import subprocess
import sys

from common.process_tree import children_by_parent, descendants


def test_descendants_reach_grandchildren_and_nothing_else() -> None:
    # a child that starts a grandchild and reports its pid
    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; p = subprocess.Popen("
         "[sys.executable, '-c', 'import time; time.sleep(60)']); print(p.pid, flush=True); "
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        below = descendants(child.pid)
        assert below[0] == child.pid and set(below) == {child.pid, grandchild}
        assert child.pid in children_by_parent()[os.getpid()]
    finally:
        subprocess.run(["kill", "-9", str(grandchild)], check=False)
        child.kill()
        child.wait()


def test_a_machine_without_proc_has_no_children(tmp_path) -> None:
    assert children_by_parent(tmp_path) == {}
