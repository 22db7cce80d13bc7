"""Environments: the pure-JAX interface, built-in tasks, and adapters chosen by `env_name`."""
from envs.base import ActionSpace, AutoResetStep, Box, Discrete, Environment, MultiDiscrete, StepResult
from envs.extras import MissingExtraError
from envs.registry import UnknownEnvError, make
