"""diffar.evaluator: validation loss, downstream tasks, the scaling-law fit."""
