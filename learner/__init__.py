"""The learner: actor-critic network, action distributions, PPO loss, optimizer and the typed train state."""
