#!/usr/bin/env python3
"""Reads a Megatron MMap indexed dataset (PREFIX.idx + PREFIX.bin) with numpy, the way Megatron-LM's
MMapIndexedDataset reads it (megatron/core/datasets/indexed_dataset.py: a struct-unpacked header, then
np.frombuffer views of a memory map for the three index arrays and for each sequence), and prints it.

Written from the documented layout (data/indexed_dataset.h), not copied from Megatron:
  .idx: b"MMIDIDX\\x00\\x00" | <Q version = 1 | <B dtype code | <Q sequence count S | <Q document count D
        | int32[S] sequence lengths | int64[S] byte pointers into .bin | int64[D] document indices
  .bin: the tokens.

  python3 tests/data/read_megatron.py PREFIX [--show N] [--decode-bytes]
  python3 tests/data/read_megatron.py PREFIX --jsonl FILE [--json-key text] [--append-eod --eod-id 0]

With --jsonl it checks that document d holds the UTF-8 bytes of the d-th non-empty --json-key string of
FILE (plus the EOD id with --append-eod), as `fathom preprocess` writes them; exit 1 on any mismatch.
"""
import argparse
import json
import struct
import sys

import numpy as np

DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
          8: np.uint16}
MAGIC = b"MMIDIDX\x00\x00"


class MegatronIndex:
    def __init__(self, prefix):
        idx_path = prefix + ".idx"
        with open(idx_path, "rb") as f:
            magic = f.read(9)
            if magic != MAGIC:
                raise ValueError(f"{idx_path}: magic {magic!r}, expected {MAGIC!r}")
            (version,) = struct.unpack("<Q", f.read(8))
            if version != 1:
                raise ValueError(f"{idx_path}: version {version}, expected 1")
            (code,) = struct.unpack("<B", f.read(1))
            self.dtype = np.dtype(DTYPES[code])
            (self.sequence_count,) = struct.unpack("<Q", f.read(8))
            (self.document_count,) = struct.unpack("<Q", f.read(8))
            header = f.tell()
        buf = memoryview(np.memmap(idx_path, mode="r", order="C"))
        s, d = self.sequence_count, self.document_count
        self.sequence_lengths = np.frombuffer(buf, dtype=np.int32, count=s, offset=header)
        self.sequence_pointers = np.frombuffer(buf, dtype=np.int64, count=s, offset=header + 4 * s)
        self.document_indices = np.frombuffer(buf, dtype=np.int64, count=d, offset=header + 12 * s)
        if header + 12 * s + 8 * d != len(buf):
            raise ValueError(f"{idx_path}: {len(buf)} bytes, expected {header + 12 * s + 8 * d}")
        self.bin = memoryview(np.memmap(prefix + ".bin", mode="r", order="C"))

    def sequence(self, i):
        return np.frombuffer(self.bin, dtype=self.dtype, count=int(self.sequence_lengths[i]),
                             offset=int(self.sequence_pointers[i]))

    def document(self, d):
        first, last = int(self.document_indices[d]), int(self.document_indices[d + 1])
        parts = [self.sequence(i) for i in range(first, last)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prefix")
    p.add_argument("--show", type=int, default=3, help="documents to print")
    p.add_argument("--decode-bytes", action="store_true", help="print documents as text (byte tokenizer)")
    p.add_argument("--jsonl", help="check the documents against this JSON-lines file")
    p.add_argument("--json-key", default="text")
    p.add_argument("--append-eod", action="store_true")
    p.add_argument("--eod-id", type=int, default=0)
    a = p.parse_args()

    index = MegatronIndex(a.prefix)
    docs = index.document_count - 1
    tokens = int(index.sequence_lengths.astype(np.int64).sum())
    print(f"{a.prefix}: {index.dtype.name}, {index.sequence_count} sequences, {docs} documents, {tokens} tokens")
    assert index.document_indices[0] == 0 and index.document_indices[-1] == index.sequence_count
    assert np.all(np.diff(index.document_indices) >= 0)
    for d in range(min(a.show, docs)):
        doc = index.document(d)
        shown = bytes(doc.astype(np.uint8)).decode("utf-8", "replace") if a.decode_bytes else doc[:32].tolist()
        print(f"document {d} ({len(doc)} tokens): {shown!r}")

    if a.jsonl:
        expected = []
        with open(a.jsonl, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                text = json.loads(line)[a.json_key]
                if text:
                    ids = list(text.encode("utf-8"))
                    expected.append(ids + ([a.eod_id] if a.append_eod else []))
        bad = 0
        if len(expected) != docs:
            print(f"MISMATCH: {docs} documents, {a.jsonl} has {len(expected)} non-empty ones")
            bad += 1
        for d in range(min(docs, len(expected))):
            got = index.document(d).astype(np.int64).tolist()
            if got != expected[d]:
                print(f"MISMATCH: document {d}: {got[:16]}... != {expected[d][:16]}...")
                bad += 1
        if bad:
            return 1
        print(f"OK: all {docs} documents match {a.jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
