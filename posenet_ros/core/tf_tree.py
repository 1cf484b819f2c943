"""Paths through a TF tree given as ``{child: parent}`` (no rclpy).

One place for the walk every TF consumer here needs: the bag reader's ``--tf MAP CAM`` chain,
the static mount chain of a bag's ``/tf_static`` and the node's TF stand-in
(``posenet_ros.ros.tf_buffer``). Each edge ``child`` stands for ``T_parent_child``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ['ancestors', 'tree_path']


def ancestors(parent_of: Mapping[str, str], frame: str) -> list[str]:
    """``[frame, parent, grandparent, ..., root]``; ValueError on a cycle."""
    chain = [frame]
    while chain[-1] in parent_of:
        chain.append(parent_of[chain[-1]])
        if len(chain) > len(parent_of) + 1:
            raise ValueError(f'the TF tree has a cycle through {frame!r}')
    return chain


def tree_path(parent_of: Mapping[str, str], target: str,
              source: str) -> list[tuple[str, bool]] | None:
    """The edges whose product is ``T_target_source``, or None when the frames are unconnected.

    ``[(child, inverted), ...]`` in multiplication order: from ``target`` up to the common
    ancestor (each edge inverted), then down to ``source``.
    """
    up_t, up_s = ancestors(parent_of, target), ancestors(parent_of, source)
    common = next((f for f in up_t if f in up_s), None)
    if common is None:
        return None
    return ([(c, True) for c in up_t[:up_t.index(common)]]
            + [(c, False) for c in reversed(up_s[:up_s.index(common)])])
