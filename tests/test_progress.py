"""Progress lines: live on a terminal, a few plain lines in logs, true counts either way."""

from __future__ import annotations

import io
import re

from common.progress import LiveProgress, ProgressCallback
from common.report import RoundRecord
from server.federation import RoundTable

ANSI = re.compile(r"\x1b\[")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_progress_is_a_few_plain_lines_with_rate_and_time_left() -> None:
    log = io.StringIO()
    line = LiveProgress("site-0: extracting features", 1000, "images", stream=log, every=0.0)
    for done in (250, 500, 1000):
        line.update(done)
    line.close()
    lines = log.getvalue().splitlines()
    assert lines[0] == "site-0: extracting features: 0/1000 images"
    assert re.fullmatch(r"site-0: extracting features: 250/1000 images, \S+ images/(s|min), "
                        r"about .+ left", lines[1])
    assert re.fullmatch(r"site-0: extracting features: 1000/1000 images in [\d.]+ s \(.+\)",
                        lines[-1])
    assert len(lines) == 4 and not ANSI.search(log.getvalue())  # done at 1000: no extra line
    quiet = io.StringIO()
    slow = LiveProgress("x", 10, stream=quiet, every=3600.0)
    for done in range(11):
        slow.update(done)
    slow.close()
    assert len(quiet.getvalue().splitlines()) == 2  # start and end, nothing between


def test_on_a_terminal_the_line_is_live_and_ends_with_the_summary() -> None:
    screen = Terminal()
    line = LiveProgress("site-0: extracting features", 100, "images", stream=screen)
    line.update(40)
    line.say("a row above the live line")
    line.update(100)
    line.close()
    text = screen.getvalue()
    assert ANSI.search(text) and "40/100" in text and "a row above the live line" in text
    assert text.rstrip().endswith("site-0: extracting features: 100/100 images in "
                                  + text.rstrip().split(" in ")[-1])


def test_a_callback_opens_no_line_when_there_is_no_work() -> None:
    log = io.StringIO()
    idle = ProgressCallback("site-0", stream=log)
    assert idle.close() is None and log.getvalue() == ""
    busy = ProgressCallback("site-1", stream=log)
    busy(0, 5)
    busy(5, 5)
    assert busy.close().startswith("site-1: 5/5 images")


def test_the_round_table_prints_plain_rows_off_a_terminal_and_a_live_line_on_one() -> None:
    log = io.StringIO()
    table = RoundTable(2, stream=log)
    table(RoundRecord(round=1, accuracy=0.55, mean_site_accuracy=0.5, epsilon_max=1.5,
                      sites_trained=["a"]))
    table.close()
    rows = log.getvalue().splitlines()
    assert rows[0].startswith("round |") and rows[2].startswith("    1 |") and len(rows) == 3
    assert "| mean site |" in rows[0] and "|    0.5000 |" in rows[2]  # each site counts once
    screen = Terminal()
    live = RoundTable(2, stream=screen)
    live(RoundRecord(round=1, mean_site_accuracy=0.5, epsilon_max=1.5, sites_trained=["a"]))
    live(RoundRecord(round=2, mean_site_accuracy=0.625, epsilon_max=3.0, sites_trained=["a"]))
    live.close()
    text = screen.getvalue()
    assert "mean site 0.625, max epsilon 3.00" in text and "    2 |" in text
    assert "training: 2/2 rounds" in text
