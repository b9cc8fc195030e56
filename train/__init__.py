"""Training infrastructure: run configs, run directories, metrics, states, schedules, optimizers,
exports, plots and the one training loop that both launchers call."""
