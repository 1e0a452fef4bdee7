"""Grounding head: Q box queries conditioned on the ``<loc>`` hidden state, decoding boxes from scene tokens.

LLaVA-3D's figure shows a grounding module decoding from a location token; Vid-LLM trains it with "bounding box
regression and matching losses". We make it DETR-like so that one ``<loc>`` can refer to several objects
(Multi3DRefer): Q learned queries plus the projected ``<loc>`` state cross-attend to the scene tokens (with an MLP
embedding of their voxel centres), self-attend, and each predicts a box and a score. Each query's centre is an
attention-weighted average of voxel centres plus a regressed offset, which anchors predictions in the metric
scene instead of regressing absolute coordinates from scratch. Sizes are ``softplus(.) + min_size`` (> 0).
Matching to targets lives in :func:`model.losses.box_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import GroundingConfig
from model.outputs import GroundingOutput
from model.precision import fp32_region


class _QueryLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(self, q: torch.Tensor, keys: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = self.norms[0](q)
        q = q + self.cross(x, keys, keys, key_padding_mask=pad, need_weights=False)[0]
        x = self.norms[1](q)
        q = q + self.self_attn(x, x, x, need_weights=False)[0]
        return q + self.mlp(self.norms[2](q))


class BoxHead(nn.Module):
    """Boxes and scores from the ``<loc>`` hidden state and the scene tokens.

    Args:
        cfg: :class:`GroundingConfig`.
        dim: LLM hidden size D (the scene tokens and the ``<loc>`` state live in this space); the head itself
            works at ``cfg.dim``.
    """

    def __init__(self, cfg: GroundingConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.dim
        # LLM hidden states can have norms of hundreds; normalising before the projections keeps the learned
        # queries from being swamped by the shared <loc> vector (which would make all queries identical).
        self.loc_in = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        self.scene_in = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        # Unit-variance queries (as DETR's nn.Embedding) stay distinct after adding the <loc> projection.
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, width))
        self.pos = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, width))
        self.layers = nn.ModuleList([_QueryLayer(width, cfg.num_heads) for _ in range(cfg.num_layers)])
        self.norm = nn.LayerNorm(width)
        self.anchor_q = nn.Linear(width, width)
        self.anchor_k = nn.Linear(width, width)
        self.box = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 6))
        self.score = nn.Linear(width, 1)

    def forward(
        self,
        loc_hidden: torch.Tensor,
        scene_tokens: torch.Tensor,
        scene_mask: torch.Tensor,
        centres: torch.Tensor,
    ) -> GroundingOutput:
        """Decode boxes.

        Args:
            loc_hidden: ``[B, D]`` last-layer hidden state at ``<loc>``.
            scene_tokens: ``[B, M, D]`` scene tokens.
            scene_mask: ``[B, M]`` bool.
            centres: ``[B, M, 3]`` voxel centres, metres, first-camera frame.

        Returns:
            :class:`GroundingOutput` with fp32 boxes ``[B, Q, 6]`` and fp32 *logit* scores ``[B, Q]`` (apply
            ``sigmoid`` for probabilities; the loss uses logits).
        """
        dtype = self.queries.dtype
        metric_centres = centres.float()
        loc_hidden, scene_tokens, centres = loc_hidden.to(dtype), scene_tokens.to(dtype), centres.to(dtype)
        b = loc_hidden.shape[0]
        # A row without any real voxel attends to its (zero) padding instead of producing NaN.
        pad = ~scene_mask & scene_mask.any(dim=1, keepdim=True)
        keys = self.scene_in(scene_tokens) + self.pos(centres)
        q = self.queries[None].expand(b, -1, -1) + self.loc_in(loc_hidden)[:, None]
        for layer in self.layers:
            q = layer(q, keys, pad)
        q = self.norm(q)
        logits = torch.einsum("bqd,bmd->bqm", self.anchor_q(q), self.anchor_k(keys)) / math.sqrt(q.shape[-1])
        raw = self.box(q)
        # Boxes are geometry: anchors, offsets and sizes in fp32 whatever the compute dtype (model.precision).
        with fp32_region(raw):
            weights = logits.float().masked_fill(pad[:, None], float("-inf")).softmax(dim=-1)
            anchor = torch.einsum("bqm,bmk->bqk", weights, metric_centres)
            raw = raw.float()
            centre = anchor + raw[..., :3]
            size = F.softplus(raw[..., 3:]) + self.cfg.min_size_m
        return GroundingOutput(boxes=torch.cat([centre, size], dim=-1), scores=self.score(q).squeeze(-1).float())
