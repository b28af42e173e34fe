"""Run-time plumbing shared by the command-line scripts: errors, devices, precision, DDP, EMA, checkpoints, logs."""
