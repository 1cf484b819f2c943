"""The synthetic scene, the demo and the paper studies."""
