"""The bundled worlds, one folder each (installed as ``worldsim.envs``); see ``worldsim.worlds``."""
