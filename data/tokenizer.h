// Byte-level tokenizer: token id = byte value, so any text round-trips and the vocabulary is 256.
#ifndef FATHOM_DATA_TOKENIZER_H_
#define FATHOM_DATA_TOKENIZER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fathom {

inline constexpr int64_t kByteVocab = 256;

// One id in [0, 256) per byte (bytes read as unsigned).
std::vector<int32_t> EncodeBytes(std::string_view text);

// The inverse of EncodeBytes. REQUIRES: every id in [0, 256) (a model with a larger vocabulary must not
// hand its extra ids here).
std::string DecodeBytes(const std::vector<int32_t>& ids);

}  // namespace fathom

#endif  // FATHOM_DATA_TOKENIZER_H_
