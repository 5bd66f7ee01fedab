"""These tests run inside ``.venv-verl`` (``make verl-env``), started by tests/test_verl_integration.py.

In an environment without verl (the workbench's own ``.venv``) they are not collected at all.
(The directory is not called ``verl``: with ``tests/`` on ``sys.path``, a ``tests/verl`` folder
would pass for a ``verl`` namespace package.)
"""

try:
    import verl.trainer.ppo.core_algos  # noqa: F401
except ImportError:
    collect_ignore_glob = ["test_*.py"]
