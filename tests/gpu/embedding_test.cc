// Embedding gather and deterministic scatter-add on the GPU (framework/kernels/cuda/embedding.h) against
// framework/kernels/cpu/embedding.h.
//
// Both directions are compared bit for bit: the forward is a row copy, and the backward adds each table
// row's dy rows in increasing position order starting from the row's old value, which is the CPU twin's
// order of f32 additions (bf16 dy widens exactly to f32, so the CPU runs on the widened copy).
#include "framework/kernels/cpu/embedding.h"

#include <cstdint>
#include <random>
#include <string>

#include "framework/cuda/device_arena.h"
#include "framework/kernels/cuda/embedding.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Download;
using testing::ExpectBitEqual;
using testing::RandomTensor;
using testing::TestSeed;
using testing::Upload;

// Ids drawn from [0, vocab) with the ends forced in; a small vocabulary gives long runs of one id.
Tensor RandomIds(int64_t n, int64_t vocab, std::mt19937_64& rng) {
  Tensor ids = Tensor::Empty({n}, DType::kI32);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
  for (int64_t i = 0; i < n; ++i) ids.data<int32_t>()[i] = pick(rng);
  ids.data<int32_t>()[0] = 0;
  ids.data<int32_t>()[n - 1] = static_cast<int32_t>(vocab - 1);
  return ids;
}

struct Case {
  int64_t tokens, vocab, cols;
};
// Tokens not multiples of 64/128, a one-column table, a vocabulary far smaller than the tokens (runs of
// ~60 positions per id) and a large sparse one.
const Case kCases[] = {{777, 1000, 200}, {3001, 50, 67}, {1, 5, 1}, {4096, 32768, 130}, {130, 7, 1}};

TEST(EmbeddingCudaTest, ForwardMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("embedding_test", size_t{64} << 20);
  for (const Case& c : kCases) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE("tokens " + std::to_string(c.tokens) + " vocab " + std::to_string(c.vocab) + " cols " +
                   std::to_string(c.cols) + " " + std::string(DTypeName(dtype)));
      arena.Reset();
      Tensor table = RandomTensor({c.vocab, c.cols}, DType::kF32, rng).To(dtype);
      Tensor ids = RandomIds(c.tokens, c.vocab, rng);
      Tensor out = arena.Alloc({c.tokens, c.cols}, dtype);
      cuda::EmbeddingForward(out, Upload(arena, ids), Upload(arena, table), nullptr);
      Tensor want = Tensor::Empty({c.tokens, c.cols}, dtype);
      cpu::EmbeddingForward(want, ids, table);
      ExpectBitEqual(Download(out), want, "out");
    }
  }
}

TEST(EmbeddingCudaTest, BackwardMatchesCpuBitForBit) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("embedding_test", size_t{64} << 20);
  for (const Case& c : kCases) {
    for (DType dy_dtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE("tokens " + std::to_string(c.tokens) + " vocab " + std::to_string(c.vocab) + " cols " +
                   std::to_string(c.cols) + " dy " + std::string(DTypeName(dy_dtype)));
      arena.Reset();
      Tensor ids = RandomIds(c.tokens, c.vocab, rng);
      Tensor dy = RandomTensor({c.tokens, c.cols}, DType::kF32, rng).To(dy_dtype);
      // The gradient accumulates (+=) into what earlier micro-batches left there.
      Tensor dtable0 = RandomTensor({c.vocab, c.cols}, DType::kF32, rng);
      const size_t bytes = cuda::EmbeddingBackwardWorkspaceBytes(c.tokens, c.vocab);
      Tensor workspace = arena.Alloc({static_cast<int64_t>((bytes + 3) / 4)}, DType::kI32);
      Tensor dids = Upload(arena, ids), ddy = Upload(arena, dy), dtable = Upload(arena, dtable0);
      cuda::EmbeddingBackward(dtable, dids, ddy, workspace, nullptr);
      Tensor want = dtable0.Clone();
      cpu::EmbeddingBackward(want, ids, dy.To(DType::kF32));
      Tensor got = Download(dtable);
      ExpectBitEqual(got, want, "dtable");
      // A second run from the same start gives the same bits (no order-dependent atomics).
      cuda::CopyToDevice(dtable, dtable0);
      cuda::EmbeddingBackward(dtable, dids, ddy, workspace, nullptr);
      ExpectBitEqual(Download(dtable), got, "dtable, second run");
    }
  }
}

}  // namespace
}  // namespace fathom
