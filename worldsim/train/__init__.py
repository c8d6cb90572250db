"""Training: codec, Diffusion Forcing teacher, few-step student, Self Forcing (and its baselines); `worldsim train`."""
