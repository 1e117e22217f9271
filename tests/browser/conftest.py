# The notebooks here are opened by tests/test_browser.py in a real browser; nbval must not
# collect them as notebook tests of their own.
collect_ignore_glob = ["*.ipynb"]
