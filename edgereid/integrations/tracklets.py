"""Per-camera tracks -> tracklets -> identities across cameras (numpy only; works with any tracker's ids).

A tracklet is one camera's track: the mean of its crops' unit embeddings (far less noisy than any one crop), the
mean of their gender probabilities and, for a model with an attribute head, the per-attribute mean of their
attribute probabilities (crops without attributes, e.g. empty boxes' NaN rows, are left out, as for gender).
When a track has been unseen for `max_gap` frames it closes, and `IdentityMatcher.assign` gives it a person id:
that of the person whose mean embedding is nearest, within
`match_distance`, whose gender does not contradict it and who was not in the same camera at the same time;
otherwise a new person. A track that the tracker broke in two within one camera is joined the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgereid.errors import InvalidInputError
from edgereid.retrieval.distances import l2_normalize


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32) if norm > 0 else v.astype(np.float32)


def _gender_side(prob: float, margin: float) -> int:
    """+1 confidently positive (female), -1 confidently negative, 0 unknown or unsure."""
    if not np.isfinite(prob) or abs(prob - 0.5) < margin:
        return 0
    return 1 if prob > 0.5 else -1


@dataclass
class Tracklet:
    """One camera's track: its crops (frame, embedding, gender probability, box, attribute probabilities)."""

    camera: int
    track: int
    frames: list = field(default_factory=list)
    embeddings: list = field(default_factory=list)
    gender: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    attributes: list = field(default_factory=list)  # (A,) float32 per crop that has them

    def add(self, frame: int, embedding: np.ndarray, gender_prob: float, box, attributes=None) -> None:
        """Append one crop of this track (`attributes`: its (A,) attribute probabilities, or None)."""
        self.frames.append(int(frame))
        self.embeddings.append(np.asarray(embedding, np.float32))
        self.gender.append(float(gender_prob))
        self.boxes.append(tuple(float(v) for v in box))
        if attributes is not None:
            row = np.asarray(attributes, np.float32).reshape(-1)
            if self.attributes and row.shape != self.attributes[0].shape:
                raise InvalidInputError(f"track {self.track}: a crop with {row.size} attribute probabilities after "
                                        f"crops with {self.attributes[0].size}; pass one model's attributes per track.")
            self.attributes.append(row)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def first(self) -> int:
        """The first frame the track was seen in."""
        return self.frames[0]

    @property
    def last(self) -> int:
        """The last frame the track was seen in."""
        return self.frames[-1]

    @property
    def mean_embedding(self) -> np.ndarray:
        """The L2-normalised mean of the crops' L2-normalised embeddings."""
        rows = np.stack(self.embeddings)
        rows = l2_normalize(rows)
        return _unit(rows.mean(axis=0))

    @property
    def gender_prob(self) -> float:
        """Mean gender probability over the crops that have one (NaN if none does)."""
        known = [g for g in self.gender if np.isfinite(g)]
        return float(np.mean(known)) if known else float("nan")

    @property
    def attribute_probs(self) -> np.ndarray | None:
        """(A,) mean attribute probabilities over the crops that have them (rows with NaN, e.g. empty boxes, are
        left out; NaN where no crop has one); None when no crop came with attributes."""
        if not self.attributes:
            return None
        rows = np.stack(self.attributes)
        known = np.isfinite(rows).all(axis=1)
        if not known.any():
            return np.full(rows.shape[1], np.nan, np.float32)
        return rows[known].mean(axis=0).astype(np.float32)


class TrackletBuilder:
    """Collects one camera's tracked detections into tracklets; a track unseen for more than `max_gap` frames
    closes (give the tracker's own max_age / track_buffer, so a track the tracker may still resume stays open)."""

    def __init__(self, camera: int, max_gap: int = 30) -> None:
        if max_gap < 0:
            raise InvalidInputError(f"max_gap must be >= 0 frames, got {max_gap}")
        self.camera, self.max_gap = int(camera), int(max_gap)
        self.open: dict = {}

    def add(self, frame: int, track_ids, embeddings: np.ndarray, gender_prob, boxes, attributes=None) -> list:
        """Add one frame's detections (track id -1 = not tracked: skipped); returns the tracklets that closed.

        `attributes`: the (N, A) attribute probabilities of the detections (`AppearanceModel.last_attributes`), or
        None for a model without an attribute head."""
        track_ids = np.asarray(track_ids, np.int64).reshape(-1)
        n = len(track_ids)
        if gender_prob is None:  # a model without a gender head: every crop's gender is unknown
            gender_prob = np.full(n, np.nan, np.float32)
        if len(embeddings) != n or len(gender_prob) != n or len(boxes) != n:
            raise InvalidInputError(f"frame {frame}: {n} track ids but {len(embeddings)} embeddings, "
                                    f"{len(gender_prob)} gender probabilities and {len(boxes)} boxes")
        if attributes is not None and len(attributes) != n:
            raise InvalidInputError(f"frame {frame}: {n} track ids but {len(attributes)} attribute rows; pass "
                                    f"the AppearanceModel's last_attributes of the same call.")
        for i in np.flatnonzero(track_ids >= 0):
            tid = int(track_ids[i])
            tracklet = self.open.setdefault(tid, Tracklet(self.camera, tid))
            tracklet.add(frame, embeddings[i], gender_prob[i], boxes[i],
                         None if attributes is None else attributes[i])
        return self.close_older_than(frame - self.max_gap)

    def close_older_than(self, frame: int) -> list:
        """Close and return the open tracklets last seen before `frame`, oldest first."""
        done = sorted((t for t in self.open.values() if t.last < frame), key=lambda t: (t.last, t.track))
        for t in done:
            del self.open[t.track]
        return done

    def close_all(self) -> list:
        """Close every open tracklet (the end of the video); oldest first."""
        return self.close_older_than(np.iinfo(np.int64).max)


@dataclass
class _Person:
    emb_sum: np.ndarray
    gender_sum: float = 0.0
    gender_count: int = 0
    spans: list = field(default_factory=list)  # (camera, first, last) of every member tracklet

    @property
    def mean(self) -> np.ndarray:
        return _unit(self.emb_sum)

    @property
    def gender_prob(self) -> float:
        return self.gender_sum / self.gender_count if self.gender_count else float("nan")


class IdentityMatcher:
    """Gives closed tracklets person ids across cameras (see the module docstring for the rule).

    `match_distance`: largest L2 distance between a tracklet's mean embedding and a person's to join them; it
    depends on the model (the default 1.0, cosine 0.5, sits mid-way in the range that scored best for a quickstart
    model on generated scenes, benchmarks/bench_multicam.py): calibrate it on your own model and cameras.
    `gender_margin`: a tracklet and a person whose mean gender probabilities are both at least this far from 0.5,
    on opposite sides, are never joined. A person's mean embedding weighs each tracklet by its crop count.
    """

    def __init__(self, match_distance: float = 1.0, gender_margin: float = 0.25) -> None:
        if not 0 < match_distance <= 2:
            raise InvalidInputError(f"match_distance is an L2 distance between unit vectors, in (0, 2]; got "
                                    f"{match_distance}")
        if not 0 <= gender_margin <= 0.5:
            raise InvalidInputError(f"gender_margin must be in [0, 0.5], got {gender_margin} (0.5 ignores gender)")
        self.match_distance, self.gender_margin = float(match_distance), float(gender_margin)
        self.people: list = []
        self.assigned: dict = {}  #: (camera, track) -> person id

    def candidates(self, tracklet: Tracklet) -> list:
        """(distance, person id) of every person the tracklet may join, nearest first (before the threshold)."""
        mean = tracklet.mean_embedding
        side = _gender_side(tracklet.gender_prob, self.gender_margin)
        out = []
        for pid, person in enumerate(self.people):
            if side and _gender_side(person.gender_prob, self.gender_margin) == -side:
                continue
            if any(cam == tracklet.camera and first <= tracklet.last and tracklet.first <= last
                   for cam, first, last in person.spans):
                continue  # one camera cannot see the same person twice at once
            out.append((float(np.linalg.norm(mean - person.mean)), pid))
        return sorted(out)

    def assign(self, tracklet: Tracklet) -> int:
        """The person id of a closed tracklet (joining the nearest allowed person, or a new one)."""
        if len(tracklet) == 0:
            raise InvalidInputError(f"tracklet (camera {tracklet.camera}, track {tracklet.track}) has no crops")
        near = self.candidates(tracklet)
        if near and near[0][0] <= self.match_distance:
            pid = near[0][1]
        else:
            pid = len(self.people)
            self.people.append(_Person(np.zeros_like(tracklet.mean_embedding)))
        person = self.people[pid]
        person.emb_sum = person.emb_sum + len(tracklet) * tracklet.mean_embedding
        known = [g for g in tracklet.gender if np.isfinite(g)]
        person.gender_sum += float(np.sum(known))
        person.gender_count += len(known)
        person.spans.append((tracklet.camera, tracklet.first, tracklet.last))
        self.assigned[(tracklet.camera, tracklet.track)] = pid
        return pid
