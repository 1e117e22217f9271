"""Make JupyterLab save widget state in notebooks (off by default), so saved runs reopen with
their widgets instead of "Error displaying widget: model not found".

    python -m peftlab.widgets.lab_settings          # once per environment, then reload the page

JupyterLab reads default overrides from every file in
`{sys.prefix}/share/jupyter/lab/settings/overrides.d/` (one file per package); this writes
`peftlab.json` there with the Jupyter Widgets setting "saveState": true. The same switch by
hand: Settings > Settings Editor > Jupyter Widgets > "Save Jupyter widget state in notebooks".
A setting you made yourself in the Settings Editor still wins over this default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from peftlab.io.files import atomic_write

PLUGIN = "@jupyter-widgets/jupyterlab-manager:plugin"
SETTINGS = {PLUGIN: {"saveState": True}}


def settings_dir(prefix: str | Path | None = None) -> Path:
    """JupyterLab's application settings folder of an environment (default: this one)."""
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "lab" / "settings"


def install(app_settings_dir: str | Path | None = None) -> Path:
    """Write overrides.d/peftlab.json (saveState on) into JupyterLab's app settings folder."""
    path = Path(app_settings_dir or settings_dir()) / "overrides.d" / "peftlab.json"
    text = json.dumps(SETTINGS, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m peftlab.widgets.lab_settings",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--app-settings-dir", type=Path, default=None,
                    help=f"JupyterLab's app settings folder (default: {settings_dir()})")
    path = install(ap.parse_args(argv).app_settings_dir)
    print(f"wrote {path}: JupyterLab now saves widget state with the notebook "
          f"(reload the JupyterLab page)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
