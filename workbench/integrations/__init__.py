"""Bridges to other training engines (optional extras): :mod:`.trl` for TRL's GRPOTrainer,
:mod:`.verl` for verl's advantage-estimator registry (in its own environment: ``make verl-env``)."""
