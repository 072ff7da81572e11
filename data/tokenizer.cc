#include "data/tokenizer.h"

#include "framework/check.h"

namespace fathom {

std::vector<int32_t> EncodeBytes(std::string_view text) {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string DecodeBytes(const std::vector<int32_t>& ids) {
  std::string text(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    FATHOM_CHECK(ids[i] >= 0 && ids[i] < kByteVocab, "[decode_bytes] token id ", ids[i], " at position ", i,
                 " is not a byte");
    text[i] = static_cast<char>(static_cast<unsigned char>(ids[i]));
  }
  return text;
}

}  // namespace fathom
