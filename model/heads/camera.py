"""Camera head: iterative refinement of the 9-D pose encoding from per-frame camera tokens (VGGT ``CameraHead``).

Each iteration embeds the current pose estimate (detached), uses it to modulate the normalised camera tokens
(adaLN: shift, scale, gate), runs a small transformer trunk over the frames' camera tokens and regresses a pose
*delta*. The running estimate after every iteration is returned (``pose_enc_list``) so the camera loss can weight
iterations (VGGT: gamma = 0.6). Parameter names follow VGGT so its camera-head weights load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import Block, Mlp
from model.pose_encoding import POSE_ENCODING_DIM

#: Slope of the FoV activation below zero (see :meth:`CameraHead.forward`).
FOV_NEGATIVE_SLOPE = 0.01


class CameraHead(nn.Module):
    """Iterative pose-encoding regressor.

    Args:
        dim_in: Camera-token channels (``2 * C`` in VGGT: frame and global outputs concatenated).
        num_trunk_layers: Transformer blocks in the trunk.
        num_heads: Trunk attention heads.
        mlp_ratio: Trunk MLP ratio.
        init_values: Trunk LayerScale init.
    """

    def __init__(
        self,
        dim_in: int,
        num_trunk_layers: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
    ) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            *[
                Block(dim_in, num_heads, mlp_ratio=mlp_ratio, init_values=init_values)
                for _ in range(num_trunk_layers)
            ]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_DIM))
        self.embed_pose = nn.Linear(POSE_ENCODING_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_ENCODING_DIM)

    def forward(self, camera_tokens: torch.Tensor, num_iterations: int = 4) -> list[torch.Tensor]:
        """Predict pose encodings.

        Args:
            camera_tokens: ``[B, S, dim_in]`` camera token of every frame (last aggregator layer).
            num_iterations: Refinement iterations (>= 1).

        Returns:
            ``num_iterations`` fp32 tensors ``[B, S, 9]``; the last is the final estimate. Translation and quaternion
            are linear outputs; the two FoVs go through a leaky ReLU: the identity on positive values like VGGT's ReLU
            (its weights give the same output), but a FoV that went negative still gets a gradient. Under a ReLU it
            gets none and stays at 0 for good (seen in training: the vertical FoV of a small model died, the focal
            length decoded to 5.6e5 px and back-projection flattened every scene onto one plane).
        """
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        b, s, _ = camera_tokens.shape
        tokens = self.token_norm(camera_tokens)
        pose: torch.Tensor | None = None
        pose_list = []
        for _ in range(num_iterations):
            if pose is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(b, s, -1))
            else:
                # The running estimate is detached, as in VGGT's CameraHead: iteration k's output is
                # ``detach(previous) + delta_k``, so its loss trains only delta_k and gradients do not chain back
                # through earlier iterations (each iteration learns a correction of a fixed estimate).
                pose = pose.detach()
                cond = self.embed_pose(pose.to(self.embed_pose.weight.dtype))
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            # The estimate accumulates in fp32 (a pose, not a feature; see model.precision).
            delta = self.pose_branch(self.trunk_norm(self.trunk(x))).float()
            pose = delta if pose is None else pose + delta
            pose_list.append(torch.cat((pose[..., :7], F.leaky_relu(pose[..., 7:], FOV_NEGATIVE_SLOPE)), dim=-1))
        return pose_list
