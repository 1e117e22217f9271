"""nbval runs every notebook here in a kernel that inherits this environment."""

import os

# progress bars go to stderr and vary run to run: keep them out of validated outputs
os.environ.setdefault("TQDM_DISABLE", "1")
# notebooks must run offline: never let a cell reach for the hub by accident
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
