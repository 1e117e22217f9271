"""Training paced by the browser test: step k+1 runs once the page shows what step k sent.

Imported by the notebooks in this folder (the kernel runs in the notebook's folder). A fit()
callback placed after the TrainingMonitor (callbacks=[monitor, paced]): whenever the monitor
has just sent something new to its view (a status line, a picture), it writes what it sent to
$PEFTLAB_BROWSER_PACE/sent and waits until tests/test_browser.py, which watches the view in
the browser, writes to $PEFTLAB_BROWSER_PACE/seen that the page shows it. So the test sees
every redraw at any machine speed, and a monitor that stops redrawing sends nothing to wait
for: training runs on to the end, and the test sees too few steps.

Between steps it pauses `pause` seconds (longer than the monitor's min_interval, so the
status line is due at every step, and enough to watch the dashboard). Without
PEFTLAB_BROWSER_PACE (the notebook opened by hand) it only pauses.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

PATIENCE = 900     # s; only against a hang if the test is gone (it fails long before this)


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write(path: Path, record: dict) -> None:
    """Replace the file at once (the reader never sees half a record)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


class PacedByTheTest:
    def __init__(self, monitor, pause: float = 0.35):
        self.monitor, self.pause = monitor, pause
        folder = os.environ.get("PEFTLAB_BROWSER_PACE")
        self.folder = Path(folder) if folder else None
        self.sent = {"step": 0, "pictures": 1}

    def on_train_begin(self, state) -> None:
        self._status, self._png = self.monitor.status.value, self.monitor.image.value
        self.sent = {"step": 0, "pictures": 1}    # the page shows the empty dashboard first
        self._wait_until_shown()
        time.sleep(self.pause)

    def on_step_end(self, state) -> None:
        if state.step >= state.total_steps:
            return                   # nothing left to pace: the test stops at the last step
        status, png = self.monitor.status.value, self.monitor.image.value
        if status != self._status or png != self._png:
            m = re.search(r"step (\d+)/\d+", status)
            self.sent = {"step": int(m.group(1)) if m else self.sent["step"],
                         "pictures": self.sent["pictures"] + (png != self._png)}
            self._status, self._png = status, png
            self._wait_until_shown()
        time.sleep(self.pause)

    def _wait_until_shown(self) -> None:
        if self.folder is None:
            return
        write(self.folder / "sent", {**self.sent, "time": time.time()})
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            seen = read(self.folder / "seen")
            if (seen.get("step", -1) >= self.sent["step"]
                    and seen.get("pictures", 0) >= self.sent["pictures"]):
                return
            time.sleep(0.02)
        print(f"the browser test did not confirm {self.sent} in {PATIENCE} s: pacing stops")
        self.folder = None
