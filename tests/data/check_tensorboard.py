#!/usr/bin/env python3
"""Checks that TensorBoard reads the scalars of a fathom run log exactly as metrics.jsonl records them.

  python3 tests/data/check_tensorboard.py LOG_DIR

Loads every events.out.tfevents.* file of LOG_DIR with tensorboard's EventAccumulator (the reader behind
`tensorboard --logdir`), and compares with LOG_DIR/metrics.jsonl, whose lines flatten to tags by joining
nested keys with '/' ("phase_seconds/attention", "expert_load/layer_1/max"; "step" and "wall_time" are
the event's own fields, JSON null is NaN; the start markers of runs, lines with "event", hold none): the
same tags, and for each the same (step, wall_time, value) sequence, values compared as the float32
TensorBoard stores. Exit 0 when everything matches, 1 otherwise.
"""
import json
import math
import os
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator


def as_float32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def flatten(obj, prefix, out):
    for key, value in obj.items():
        tag = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            flatten(value, tag, out)
        else:
            out[tag] = math.nan if value is None else float(value)


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    log_dir = sys.argv[1]
    expected = {}  # tag -> [(step, wall_time, value)]
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        for number, line in enumerate(f, 1):
            record = json.loads(line)
            if "event" in record:  # a run's start marker: no metrics
                continue
            step, wall_time = record.pop("step"), record.pop("wall_time")
            flat = {}
            flatten(record, "", flat)
            for tag, value in flat.items():
                expected.setdefault(tag, []).append((step, wall_time, as_float32(value)))

    acc = event_accumulator.EventAccumulator(log_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    errors = []
    for tag in sorted(set(tags) | set(expected)):
        if tag not in tags:
            errors.append(f"{tag}: in metrics.jsonl, not in the event files")
            continue
        if tag not in expected:
            errors.append(f"{tag}: in the event files, not in metrics.jsonl")
            continue
        got = [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)]
        want = expected[tag]
        if len(got) != len(want):
            errors.append(f"{tag}: {len(got)} events, metrics.jsonl has {len(want)}")
            continue
        for (gs, gw, gv), (ws, ww, wv) in zip(got, want):
            if gs != ws or gw != ww or not same(gv, wv):
                errors.append(f"{tag}: event (step {gs}, wall_time {gw}, {gv}) != json (step {ws}, {ww}, {wv})")
                break
    count = sum(len(v) for v in expected.values())
    if errors:
        print("\n".join(errors))
        print(f"FAILED: {len(errors)} of {len(set(tags) | set(expected))} tags differ")
        return 1
    print(f"OK: {len(tags)} tags, {count} scalars: TensorBoard reads what metrics.jsonl says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
