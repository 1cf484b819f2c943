"""The trainer (``posenet-ros train``): config, loop, losses, checkpoints, budget."""
