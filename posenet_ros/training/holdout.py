"""The default validation split: contiguous segments held out of the training split.

``val_split: holdout`` (the default) validates on frames carved out of the training split, so
the test split is never read while training and never selects the model. The rule is
deterministic (no random numbers) and keeps the held-out frames representative of the whole
scene without making them near-duplicates of training frames:

1. Frames are grouped into sequences: the folder part of the sample name (7-Scenes
   ``seq-01/frame-000000``, Cambridge ``seq1/frame00001.png``); names without one form a single
   sequence. Within a sequence, frames are ordered by time stamp when every frame has one,
   else by name.
2. Each sequence is cut into contiguous segments of ``segment`` frames (the last one of a
   sequence may be shorter). When the split has fewer than ``1 / fraction`` segments'
   worth of frames the segment length shrinks to ``max(1, floor(n * fraction))``, so a small
   split still holds out about ``fraction`` of its frames.
3. ``max(1, round(fraction * n_segments))`` segments, evenly spaced over all segments of all
   sequences (centred: the ``(j + 1/2) * n_segments / n_val``-th), are held out whole.

A held-out segment of 10 frames is interior to a stretch of trajectory the network never saw:
only its two end frames have a training neighbour one frame away, unlike every-k-th-frame
sampling, where each held-out frame sits between two trained-on near-copies.
"""

from __future__ import annotations

import math
from collections import OrderedDict

__all__ = ['holdout_split', 'sequence_of']


def sequence_of(name: str) -> str:
    """Sequence id of a sample name: its folder part ('' when it has none)."""
    name = str(name).replace('\\', '/')
    return name.rsplit('/', 1)[0] if '/' in name else ''


def holdout_split(samples: list, fraction: float = 0.1, segment: int = 10
                  ) -> tuple[list, list]:
    """``(train, held_out)``: the samples to train on and the validation samples.

    Both keep the input order of ``samples``; together they are exactly ``samples``. A split
    of fewer than 2 frames holds nothing out. See the module docstring for the rule.
    """
    n = len(samples)
    if n < 2 or fraction <= 0:
        return list(samples), []
    seg_len = max(1, min(int(segment), int(math.floor(n * fraction))))
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, s in enumerate(samples):
        groups.setdefault(sequence_of(getattr(s, 'name', '')), []).append(i)
    timed = all(getattr(s, 'stamp', None) is not None for s in samples)
    segments: list[list[int]] = []
    for seq in sorted(groups):
        idx = sorted(groups[seq], key=(lambda i: (samples[i].stamp, samples[i].name)) if timed
                     else (lambda i: samples[i].name))
        segments += [idx[k:k + seg_len] for k in range(0, len(idx), seg_len)]
    n_val = max(1, round(fraction * len(segments)))
    n_val = min(n_val, len(segments) - 1)  # always keep something to train on
    chosen = {int((j + 0.5) * len(segments) / n_val) for j in range(n_val)}
    held = {i for k in chosen for i in segments[k]}
    return ([s for i, s in enumerate(samples) if i not in held],
            [s for i, s in enumerate(samples) if i in held])
