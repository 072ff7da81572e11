// Test support for checkpoints: a small DeepSeek-V3-shaped model, and state values that are a pure
// function of (seed, kind, HF tensor name, element), so a table of any mesh can be filled before a save
// and checked after a load without any rank knowing another's layout.
#ifndef FATHOM_TESTS_CHECKPOINT_CHECKPOINT_TEST_SUPPORT_H_
#define FATHOM_TESTS_CHECKPOINT_CHECKPOINT_TEST_SUPPORT_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "checkpoint/checkpoint_index.h"
#include "checkpoint/param_slices.h"
#include "checkpoint/rank_file_writer.h"
#include "framework/config.h"
#include "framework/numeric.h"
#include "framework/param_table.h"
#include "framework/tensor.h"
#include "layers/expert_exchange.h"
#include "layers/model.h"
#include "tests/common/unused_exchange.h"

namespace fathom::testing {

// Four layers (one dense), 8 routed experts, one shared expert, q LoRA, one MTP module.
inline ModelConfig CheckpointTestModel() {
  ModelConfig m;
  m.vocab_size = 48;
  m.hidden_size = 16;
  m.intermediate_size = 24;
  m.moe_intermediate_size = 8;
  m.num_hidden_layers = 4;
  m.first_k_dense_replace = 1;
  m.num_attention_heads = 2;
  m.q_lora_rank = 8;
  m.kv_lora_rank = 8;
  m.qk_nope_head_dim = 4;
  m.qk_rope_head_dim = 2;
  m.v_head_dim = 4;
  m.n_routed_experts = 8;
  m.n_shared_experts = 1;
  m.num_experts_per_tok = 2;
  m.num_nextn_predict_layers = 1;
  return m;
}

// The table slice of pipeline stage [first_layer, end_layer) holding experts [expert_begin, + count).
inline ModelSlice TableSlice(const ModelConfig& m, int64_t first_layer, int64_t end_layer,
                             int64_t expert_begin, int64_t expert_count) {
  ModelSlice slice;
  slice.first_layer = first_layer;
  slice.end_layer = end_layer;
  slice.embedding = first_layer == 0;
  slice.head = end_layer == m.num_hidden_layers;
  slice.experts = {expert_begin, expert_count};
  if (expert_count != m.n_routed_experts) {
    slice.exchange = UnusedExpertExchange::Get();
  }
  return slice;
}

// A value in (-2, 2), never 0, from a splitmix64-style hash of its coordinates.
inline float StateValue(uint64_t seed, const std::string& kind, const std::string& name, int64_t element) {
  uint64_t h = seed ^ 0x9E3779B97F4A7C15ull;
  for (char c : kind) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  h ^= static_cast<uint64_t>(element) + 0x632BE59BD9B4E019ull;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  h ^= h >> 31;
  const double u = static_cast<double>(h >> 11) / 9007199254740992.0;  // [0, 1)
  return static_cast<float>(u * 4.0 - 2.0) + 1e-3f;
}

inline void SetElement(const Tensor& t, int64_t i, float v) {
  switch (t.dtype()) {
    case DType::kF32:
      t.data<float>()[i] = v;
      break;
    case DType::kF64:
      t.data<double>()[i] = v;
      break;
    case DType::kBF16:
      t.data<Bf16>()[i] = FloatToBf16(v);
      break;
    default:
      FATHOM_CHECK(false, "SetElement: ", DTypeName(t.dtype()));
  }
}

// The value `t` should hold at i after a save of StateValue in `stored` dtype and a load into t's dtype.
inline bool ElementIs(const Tensor& t, int64_t i, float v, DType stored) {
  if (stored == DType::kBF16) v = Bf16ToFloat(FloatToBf16(v));
  switch (t.dtype()) {
    case DType::kF32:
      return t.data<float>()[i] == v;
    case DType::kF64:
      return t.data<double>()[i] == static_cast<double>(v);
    case DType::kBF16:
      return t.data<Bf16>()[i].bits == FloatToBf16(v).bits;
    default:
      return false;
  }
}

// data holds table elements [table_begin, ...): every piece's elements get StateValue.
inline void FillState(const Tensor& data, int64_t table_begin, const std::vector<TensorPiece>& pieces,
                      uint64_t seed, const std::string& kind) {
  for (const TensorPiece& p : pieces) {
    for (int64_t i = 0; i < p.numel(); ++i) {
      SetElement(data, p.table_offset - table_begin + i, StateValue(seed, kind, p.name, p.begin + i));
    }
  }
}

// Elements of the pieces in `data` that differ from StateValue saved as `stored` (0 when all match).
inline int64_t CountStateMismatches(const Tensor& data, int64_t table_begin,
                                    const std::vector<TensorPiece>& pieces, uint64_t seed,
                                    const std::string& kind, DType stored) {
  int64_t bad = 0;
  for (const TensorPiece& p : pieces) {
    for (int64_t i = 0; i < p.numel(); ++i) {
      bad += !ElementIs(data, p.table_offset - table_begin + i, StateValue(seed, kind, p.name, p.begin + i),
                        stored);
    }
  }
  return bad;
}

// The sources a rank saves for the table range [begin, end): values (f32), and the AdamW moments of the
// trainable pieces in `moment_dtype` (adam_m) and bf16 (adam_v), all filled with StateValue(seed, ...).
inline std::vector<ShardSource> MakeSources(const ParamTable& table, int64_t begin, int64_t end,
                                            uint64_t seed, DType moment_dtype = DType::kF32) {
  std::vector<ShardSource> out;
  for (auto [kind, dtype, filter] :
       {std::tuple<const char*, DType, PieceFilter>{kKindValue, DType::kF32, PieceFilter::kAll},
        {kKindAdamM, moment_dtype, PieceFilter::kTrainableOnly},
        {kKindAdamV, DType::kBF16, PieceFilter::kTrainableOnly}}) {
    ShardSource s{kind, TablePieces(table, begin, end, filter), Tensor::Zeros({end - begin}, dtype), begin};
    FillState(s.data, begin, s.pieces, seed, kind);
    out.push_back(std::move(s));
  }
  return out;
}

// A fresh directory per test, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::path(::testing::TempDir()) / "checkpoint_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_CHECKPOINT_CHECKPOINT_TEST_SUPPORT_H_
