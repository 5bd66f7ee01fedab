"""Bridges to other training engines (optional extras): :mod:`.trl` for TRL's GRPOTrainer."""
