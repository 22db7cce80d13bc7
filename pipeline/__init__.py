"""The training dataflow: rollout, advantage computation, SGD, evaluation, composed into one update."""
