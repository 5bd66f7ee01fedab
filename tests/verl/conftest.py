"""These tests run inside ``.venv-verl`` (``make verl-env``), started by tests/test_verl_integration.py.

In an environment without verl (the workbench's own ``.venv``) they are not collected at all.
"""

import importlib.util

if importlib.util.find_spec("verl") is None:
    collect_ignore_glob = ["test_*.py"]
