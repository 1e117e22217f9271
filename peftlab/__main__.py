"""`python -m peftlab compare ...`: the same as the `peftlab` console script."""

from peftlab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
