"""A policy symmetric by construction, for games that look the same in a mirror (SB3 PPO / A2C).

CartPole seen in a mirror is CartPole with "left" and "right" swapped; a good policy is the same
policy in both. An agent trained in a learned world need not be: it learns whatever lean the world
has (a push felt a little harder one way) and, in the real game, drifts that way. ``MirrorPolicy``
removes the lean from the agent itself, for training as well as acting: every observation is
evaluated twice in one batch, as seen and as seen in the mirror, and the policy is the mixture

    pi(a | o) = (pi_net(a | o) + pi_net(perm[a] | mirror(o))) / 2,    V(o) = (V_net(o) + V_net(mirror(o))) / 2

so pi(perm[a] | mirror(o)) = pi(a | o) exactly, whatever the weights (an equivariant network, by
averaging over the two-element group). Its greedy action is the argmax of the averaged
probabilities. The mirror of an observation is its negation for read states whose variables are
odd under a left-right flip (CartPole's x and angle, ``obs_mirror="negate"``) or a flip of the last
axis for channel-first frames (``"flip"``). Discrete action spaces only.

    from worldsim.gym.symmetric import MirrorPolicy, make_symmetric
    PPO(MirrorPolicy, venv, policy_kwargs=dict(action_perm=[1, 0], obs_mirror="negate"))
    model = make_symmetric(PPO.load("agent.zip"), [1, 0], "negate")     # a trained agent, made symmetric
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch as th

from worldsim.gym.sb3 import INSTALL_HINT
from worldsim.spaces import ActionSpec

try:
    from stable_baselines3.common.distributions import Distribution
    from stable_baselines3.common.policies import ActorCriticPolicy
except ImportError as e:  # the class subclasses SB3's: it cannot exist without it
    raise ImportError(INSTALL_HINT) from e

OBS_MIRRORS = ("negate", "flip")


class MirrorPolicy(ActorCriticPolicy):
    """SB3's actor-critic, made symmetric under a mirror (module docstring); extra kwargs
    ``action_perm`` (the action each action becomes in the mirror) and ``obs_mirror``."""

    _perm: th.Tensor  # (A,) the action_perm, on the policy's device

    def __init__(self, *args: Any, action_perm: Sequence[int] = (), obs_mirror: str = "negate", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # checked: a Discrete space, and a permutation of its actions
        perm = ActionSpec.from_space(self.action_space).mirror_table(action_perm).tolist()
        if obs_mirror not in OBS_MIRRORS:
            raise ValueError(f"obs_mirror {obs_mirror!r}: choose one of {OBS_MIRRORS}")
        self.action_perm, self.obs_mirror = perm, obs_mirror
        self.register_buffer("_perm", th.tensor(perm, dtype=th.long), persistent=False)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "action_perm": self.action_perm, "obs_mirror": self.obs_mirror}

    def mirror(self, obs: th.Tensor) -> th.Tensor:
        """The observation seen in the mirror."""
        return -obs if self.obs_mirror == "negate" else th.flip(obs, dims=(-1,))

    def _both(self, obs: th.Tensor) -> tuple[Distribution, th.Tensor]:
        """The mixture distribution and averaged value for a batch ``obs`` (B, ...)."""
        n = obs.shape[0]
        features = self.extract_features(th.cat([obs, self.mirror(obs)]))  # (2B, F), one batch
        if self.share_features_extractor:
            latent_pi, latent_vf = self.mlp_extractor(features)
        else:
            latent_pi = self.mlp_extractor.forward_actor(features[0])
            latent_vf = self.mlp_extractor.forward_critic(features[1])
        logp = th.log_softmax(self.action_net(latent_pi), dim=-1)  # (2B, A)
        mixed = th.logsumexp(th.stack([logp[:n], logp[n:][:, self._perm]]), dim=0) - math.log(2.0)  # (B, A)
        values = self.value_net(latent_vf)  # (2B, 1)
        return self.action_dist.proba_distribution(action_logits=mixed), 0.5 * (values[:n] + values[n:])

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        distribution, values = self._both(self.obs_tensor(obs))
        actions = distribution.get_actions(deterministic=deterministic)
        return actions, values, distribution.log_prob(actions)

    def evaluate_actions(self, obs: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        distribution, values = self._both(self.obs_tensor(obs))
        return values, distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: Any) -> Distribution:
        return self._both(self.obs_tensor(obs))[0]

    def predict_values(self, obs: Any) -> th.Tensor:
        return self._both(self.obs_tensor(obs))[1]

    @staticmethod
    def obs_tensor(obs: Any) -> th.Tensor:
        if not isinstance(obs, th.Tensor):
            raise TypeError(f"MirrorPolicy takes Box observations (one tensor), got {type(obs).__name__}")
        return obs


def make_symmetric(model: Any, action_perm: Sequence[int], obs_mirror: str) -> Any:
    """The same SB3 on-policy agent (PPO / A2C), its policy replaced by a :class:`MirrorPolicy`
    with the same weights and optimizer state (a plain trained agent, made symmetric)."""
    if isinstance(model.policy, MirrorPolicy):
        return model
    weights, optim = model.policy.state_dict(), model.policy.optimizer.state_dict()
    model.policy_class = MirrorPolicy
    model.policy_kwargs = {**model.policy_kwargs, "action_perm": list(action_perm), "obs_mirror": obs_mirror}
    model._setup_model()
    model.policy.load_state_dict(weights)
    model.policy.optimizer.load_state_dict(optim)
    return model
