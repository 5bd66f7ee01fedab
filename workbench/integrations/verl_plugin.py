"""Importing this module registers the workbench's verl estimators (``DEFAULT_NAMES``: ``"gtpo"``, ``"grpo_s"``,
``"entropy_adv"``, ``"gtpo_surprisal"``, ``"grpo_s_surprisal"``).

For verl's own hook, which imports the modules listed in ``VERL_USE_EXTERNAL_MODULES`` in every
process that imports verl, Ray actors included::

    VERL_USE_EXTERNAL_MODULES=workbench.integrations.verl_plugin

See :mod:`workbench.integrations.verl`.
"""

from .verl import register

register()
