"""Evaluation against the real game: `worldsim eval` (cli.py), metrics, rollouts, report."""
