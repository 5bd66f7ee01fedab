"""Importing this module registers the workbench's verl estimators (``"gtpo"``, ``"grpo_s"``).

For verl's own hook, which imports the modules listed in ``VERL_USE_EXTERNAL_MODULES`` in every
process that imports verl, Ray actors included::

    VERL_USE_EXTERNAL_MODULES=workbench.integrations.verl_plugin

See :mod:`workbench.integrations.verl`.
"""

from .verl import register

register()
