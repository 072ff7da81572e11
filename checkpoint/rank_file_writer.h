// Writing one rank's file of a checkpoint: the pieces of HF tensors this rank owns, streamed from host
// memory into an HDF5 file (checkpoint/hdf5_rank_file.h), with a CRC-32C per kCrcChunkElements chunk of
// every slice (checkpoint/checkpoint_index.h). Nothing is gathered or staged: each piece is written
// straight from the caller's buffer in blocks of at most kWriteBlockChunks chunks, so the only memory used
// is HDF5's own.
//
// The file goes into a checkpoint's temporary directory; atomicity comes from the directory's rename at
// commit (checkpoint/checkpoint_writer.h), so the file itself is written in place, then fsynced together
// with its directory before WriteRankFile returns.
//
// Thread safety: one call per file; concurrent calls on distinct files need a thread-safe HDF5.
#ifndef FATHOM_CHECKPOINT_RANK_FILE_WRITER_H_
#define FATHOM_CHECKPOINT_RANK_FILE_WRITER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_index.h"
#include "checkpoint/param_slices.h"
#include "framework/tensor.h"

namespace fathom {

// Chunks per HDF5 write call (64 MiB of f32): large enough for full bandwidth, small enough that a
// thread-safe HDF5's global lock is never held long by a background save.
inline constexpr int64_t kWriteBlockChunks = 16;

// What a rank writes of one kind of state from one buffer. Several sources may share a kind (and then its
// dtype): a ZeRO rank has one moment buffer per parameter group; their pieces share the kind's dataset.
struct ShardSource {
  std::string kind;                 // IsValidKindName
  std::vector<TensorPiece> pieces;  // (TablePieces) each inside [table_begin, table_begin + data.numel())
  Tensor data;                      // flat: table elements [table_begin, ...) in the stored dtype (f32, f64,
                                    // bf16); the writer REQUIRES a CPU tensor
  int64_t table_begin = 0;
};

// Elements and bytes `sources` hold in their pieces (what WriteRankFile stores, before HDF5's overhead).
int64_t SourceBytes(const std::vector<ShardSource>& sources);

// Writes `sources` into a new file at `path` (one dataset per kind, the pieces in the given order, sources
// of one kind one after another), closes it, fsyncs it and its directory. Returns what was written: the file
// (name = the path's last component, bytes = its size) and every piece's slice with slice.file = 0 (the
// committing rank numbers the files). `after_first_write` (may be empty) runs once, right after the first
// piece's first block reached the file: the place where a fault test kills a rank in the middle of a save.
// Errors: Internal naming the file (and the dataset) for any I/O failure; the partial file is left for the
// caller's cleanup of the temporary directory. Violated REQUIRES (a CPU tensor of a storable dtype, pieces
// inside it, valid kinds, one dtype per kind) are FATHOM_CHECK failures.
absl::StatusOr<RankWriteRecord> WriteRankFile(const std::string& path,
                                              const std::vector<ShardSource>& sources,
                                              const std::function<void()>& after_first_write = {});

// A piece whose elements are produced on demand rather than held in memory, for writers that stream from
// another format (fathom import reads an HF directory tensor by tensor).
struct StreamedPiece {
  std::string name;            // HF name
  Shape shape;                 // the whole tensor's shape
  int64_t begin = 0, end = 0;  // [begin, end): elements of the tensor written
  // Fills `out` (a CPU tensor of the file's dtype) with the tensor's elements [b, b + out.numel()), a
  // block within [begin, end). An error aborts the write and is returned as it is.
  std::function<absl::Status(int64_t b, const Tensor& out)> fill;
};

// As WriteRankFile for one kind of state in `dtype` (f32, f64 or bf16), the pieces in the given order,
// each produced block by block (at most kWriteBlockChunks checksum chunks at a time, one buffer reused), so
// the memory used is one block whatever the pieces' sizes. Errors: a fill's error, or Internal naming the
// file for I/O; the partial file is left for the caller's cleanup of its temporary directory.
absl::StatusOr<RankWriteRecord> WriteStreamedRankFile(const std::string& path, const std::string& kind,
                                                      DType dtype, const std::vector<StreamedPiece>& pieces);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_RANK_FILE_WRITER_H_
