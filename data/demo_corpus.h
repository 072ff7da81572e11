// The demo corpus: English-like text the repository generates itself (no download, no third-party text),
// for the tiny recipe, CI training runs and examples.
//
// A seeded generator (its own splitmix64 stream and integer arithmetic only, so the bytes are the same on
// every platform, compiler and run) writes short chapters: a title line, then sentences from a small
// grammar over a few hundred hand-written words (names, animals, objects, places, adjectives, verbs with
// their past and third-person forms, professions, times), with numbers that agree with the text (counts,
// years, sums and products that are correct, prices times quantities), quoted speech, questions and
// answers, lists with commas, and a blank line between chapters. A chapter keeps one protagonist and one
// place, so there is structure beyond the sentence for a model to pick up.
//
// Size: exactly kDemoCorpusBytes = 320000 bytes of 7-bit ASCII (printable characters and '\n'); the
// generator writes whole chapters and cuts the stream at that length (the 575th chapter is cut short).
// Learnability: 3.2 nats per byte of unigram entropy and 2.3 nats of entropy of a byte given the previous
// one (tests/data/corpus_test.cc bounds both), so a byte-level model that learns even bigram statistics
// sits far below ln(256) = 5.55 nats.
#ifndef FATHOM_DATA_DEMO_CORPUS_H_
#define FATHOM_DATA_DEMO_CORPUS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fathom {

inline constexpr int64_t kDemoCorpusBytes = 320000;

// Generated on first use (thread-safe), cached for the life of the process; the same bytes every run.
const std::string& DemoCorpus();

// The corpus cut into its chapters, the documents of `fathom preprocess --demo-corpus`: each starts at a
// "Chapter " that opens the text or follows a blank line, and runs to the next one (its trailing blank
// line included; the last chapter is the one cut short). Views into `corpus`.
std::vector<std::string_view> DemoCorpusChapters(std::string_view corpus);

}  // namespace fathom

#endif  // FATHOM_DATA_DEMO_CORPUS_H_
